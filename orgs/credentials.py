"""Minting and looking up hashed credentials (API keys and personal tokens).

Plaintext is ``fx_live_`` (API keys) or ``fxu_`` (people) + 40 random
url-safe characters, shown once. Only ``sha256(plaintext)`` is stored: keys are
high-entropy, so a fast hash is safe and keeps the hot path cheap. Presenting
the stored hash itself does not authenticate (it is hashed again).
"""
from __future__ import annotations

import hashlib
import secrets

API_KEY_PREFIX = "fx_live_"
USER_TOKEN_PREFIX = "fxu_"
VISIBLE_CHARS = 12


def hash_credential(plaintext: str) -> str:
    return hashlib.sha256(plaintext.encode("utf-8")).hexdigest()


def mint(prefix: str) -> tuple[str, str, str]:
    """Return ``(plaintext, visible_prefix, hash)`` for a new credential."""
    plaintext = prefix + secrets.token_urlsafe(30)
    return plaintext, plaintext[:VISIBLE_CHARS], hash_credential(plaintext)
