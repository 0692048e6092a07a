"""Public ids: a type prefix and a short random part (``rev_3k9f2a7x1q``)."""
import secrets
import string

_ALPHABET = string.ascii_lowercase + string.digits


def new_id(prefix: str, length: int = 12) -> str:
    return f"{prefix}_" + "".join(secrets.choice(_ALPHABET) for _ in range(length))


def revision_id() -> str:
    return new_id("rev", 10)


def run_id() -> str:
    return new_id("run", 16)


def span_id() -> str:
    return new_id("spn", 16)


def conversation_id() -> str:
    return new_id("conv", 14)
