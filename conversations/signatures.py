"""Meta's webhook signature: `X-Hub-Signature-256: sha256=<hex HMAC-SHA256(app secret, body)>`.

Always computed over the raw bytes received: Meta's serialisation escapes non-ASCII (`\\u00e9`)
and `/` (`\\/`), so re-serialising a parsed body would produce other bytes and another digest.
Also used by the Graph simulator and the tests to sign what they send, Meta-style.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

SIGNATURE_HEADER = "X-Hub-Signature-256"
LEGACY_SIGNATURE_HEADER = "X-Hub-Signature"
_PREFIX = "sha256="


def signature_for(body: bytes, *, secret: str) -> str:
    """The header value Meta would send with `body`."""
    return _PREFIX + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def legacy_signature_for(body: bytes, *, secret: str) -> str:
    return "sha1=" + hmac.new(secret.encode(), body, hashlib.sha1).hexdigest()


def signature_is_valid(body: bytes, header_value: str | None, *, secret: str) -> bool:
    """Constant-time check of a received header against the raw body."""
    if not header_value or not header_value.startswith(_PREFIX):
        return False
    expected = signature_for(body, secret=secret)
    try:
        return hmac.compare_digest(expected.encode("ascii"), header_value.strip().encode("ascii"))
    except UnicodeEncodeError:
        return False


def meta_json_bytes(document: Any) -> bytes:
    """`document` serialised the way Meta does: ASCII only, `/` escaped, no spaces."""
    text = json.dumps(document, ensure_ascii=True, separators=(",", ":"))
    return text.replace("/", "\\/").encode("ascii")
