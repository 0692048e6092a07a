"""Encryption at rest for secret values (Fernet, key rotation by a key list).

``FRUXON_ENCRYPTION_KEY`` holds one or more Fernet keys, newest first: new
values are encrypted with the first, any listed key decrypts. ``rotate`` re-
encrypts a token under the newest key (``manage.py rotate_secrets``).
"""
from functools import lru_cache

from cryptography.fernet import Fernet, MultiFernet
from django.conf import settings

from fruxon import log_redaction


@lru_cache(maxsize=4)
def _fernet(keys: tuple[str, ...]) -> MultiFernet:
    return MultiFernet([Fernet(k.encode()) for k in keys])


def fernet() -> MultiFernet:
    return _fernet(tuple(settings.FRUXON_ENCRYPTION_KEYS))


def encrypt(plaintext: str) -> str:
    log_redaction.remember(plaintext)  # a value being stored is as secret as one being read
    return fernet().encrypt(plaintext.encode("utf-8")).decode("ascii")


def decrypt(token: str) -> str:
    """The plaintext; also registered with the log filter, so no log line of this process shows it."""
    plaintext = fernet().decrypt(token.encode("ascii")).decode("utf-8")
    log_redaction.remember(plaintext)
    return plaintext


def rotate(token: str) -> str:
    return fernet().rotate(token.encode("ascii")).decode("ascii")
