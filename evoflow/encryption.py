"""Encryption at rest for secrets kept in the database (page access tokens).

Fernet (AES-128-CBC + HMAC-SHA256) with the key from `FIELD_ENCRYPTION_KEY`. Several keys may
be given, comma-separated: the first encrypts, every one decrypts, so a key can be rotated
without a flag day. Plaintext never reaches logs, the admin or the API: models expose the
ciphertext column only, and callers decrypt at the moment they need the secret.
"""

from __future__ import annotations

from functools import lru_cache

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings


class DecryptionFailed(Exception):
    """The stored value was not encrypted with any configured key (or was tampered with)."""


@lru_cache(maxsize=4)
def _fernet(keys: str) -> MultiFernet:
    return MultiFernet([Fernet(key.strip().encode()) for key in keys.split(",") if key.strip()])


def encrypt_text(plaintext: str) -> str:
    """The ciphertext of `plaintext`, as URL-safe text fit for a text column."""
    return _fernet(settings.FIELD_ENCRYPTION_KEY).encrypt(plaintext.encode()).decode()


def decrypt_text(ciphertext: str) -> str:
    try:
        return _fernet(settings.FIELD_ENCRYPTION_KEY).decrypt(ciphertext.encode()).decode()
    except InvalidToken as error:
        raise DecryptionFailed("the value cannot be decrypted with the configured keys") from error
