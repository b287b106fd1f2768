"""The checks production's secrets must pass at startup (DEBUG off), read by the settings.

A secret that is missing, one of the placeholders the repository ships for local runs (they are
public, so anyone could sign sessions or webhooks, or decrypt page tokens, with them), too
short to resist guessing, or an encryption key Fernet cannot use or that is not random, stops
the process before it serves anything, with one line per problem naming the variable. Nothing
here prints a secret's value.
"""

from __future__ import annotations

import base64
import binascii

# The shortest value each secret may have. Django's own deploy check asks 50 characters (and 5
# distinct ones) of SECRET_KEY; Meta's app secrets are 32 hex digits; the verify token and the
# CRM token are compared with what a caller sends, so they must not be guessable either.
MIN_LENGTHS = {
    "SECRET_KEY": 50,
    "FB_APP_SECRET": 32,
    "FB_VERIFY_TOKEN": 16,
    "CRM_API_TOKEN": 16,
}
MIN_DISTINCT_CHARACTERS = 5
# A Fernet key is 32 random bytes; fewer distinct byte values than this is a made-up key (the
# all-zero local one has one), never a generated one (32 random bytes almost always have more
# than 25).
MIN_DISTINCT_KEY_BYTES = 12


def secret_problems(values: dict[str, str], *, placeholders: set[str]) -> list[str]:
    """What is wrong with each secret in `values` (name -> value), one sentence each."""
    problems: list[str] = []
    for name, value in values.items():
        if value in placeholders:
            problems.append(
                f"{name} is a placeholder the repository ships for local runs; set a secret of "
                "your own"
            )
            continue
        if name == "FIELD_ENCRYPTION_KEY":
            problems.extend(_fernet_key_problems(name, value, placeholders=placeholders))
            continue
        minimum = MIN_LENGTHS.get(name)
        if minimum is not None and len(value) < minimum:
            problems.append(f"{name} is {len(value)} characters long; it needs at least {minimum}")
        elif len(set(value)) < MIN_DISTINCT_CHARACTERS:
            problems.append(
                f"{name} has fewer than {MIN_DISTINCT_CHARACTERS} distinct characters; use a "
                "random value"
            )
        elif name == "SECRET_KEY" and value.startswith("django-insecure-"):
            problems.append(f"{name} is one of Django's generated development keys")
    return problems


def _fernet_key_problems(name: str, value: str, *, placeholders: set[str]) -> list[str]:
    problems = []
    keys = [key.strip() for key in value.split(",")]
    for position, key in enumerate(keys, start=1):
        which = f"{name} key {position} of {len(keys)}" if len(keys) > 1 else name
        if key in placeholders:
            problems.append(f"{which} is the placeholder the repository ships for local runs")
            continue
        try:
            raw = base64.urlsafe_b64decode(key.encode())
        except (binascii.Error, ValueError):
            raw = b""
        if len(raw) != 32 or not key:
            problems.append(
                f"{which} is not a Fernet key (32 bytes, URL-safe base64: generate one with "
                "`python -c 'from cryptography.fernet import Fernet; "
                "print(Fernet.generate_key().decode())'`)"
            )
        elif len(set(raw)) < MIN_DISTINCT_KEY_BYTES:
            problems.append(f"{which} is not random; generate a new Fernet key")
    return problems
