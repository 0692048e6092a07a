"""A receiver's check of a Standard Webhooks delivery, written from the specification.

Independent of the ``standardwebhooks`` package the product signs with, so a shared
misreading of the spec cannot pass unnoticed.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time

TOLERANCE = 5 * 60  # seconds, as the specification recommends


class Rejected(Exception):
    pass


def verify(secret: str, headers: dict, raw: bytes, *, now: float | None = None) -> dict:
    """Verify one delivery as a receiver would; return the parsed body or raise Rejected."""
    lower = {k.lower(): v for k, v in headers.items()}
    msg_id, stamp, signatures = (lower.get(h) for h in ("webhook-id", "webhook-timestamp", "webhook-signature"))
    if not (msg_id and stamp and signatures):
        raise Rejected("missing headers")
    if abs((time.time() if now is None else now) - int(stamp)) > TOLERANCE:
        raise Rejected("timestamp outside the tolerance")
    assert secret.startswith("whsec_")
    key = base64.b64decode(secret[len("whsec_"):])
    expected = hmac.new(key, msg_id.encode() + b"." + stamp.encode() + b"." + raw, hashlib.sha256).digest()
    for entry in signatures.split(" "):
        version, _, value = entry.partition(",")
        if version == "v1" and hmac.compare_digest(base64.b64decode(value), expected):
            return json.loads(raw)
    raise Rejected("no matching signature")
