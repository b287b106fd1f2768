"""Phone numbers: kept as typed, and normalised to E.164 for matching."""

from __future__ import annotations

import phonenumbers
from django.conf import settings


class InvalidPhoneNumber(ValueError):
    """The text is not a valid phone number."""


def phone_to_e164(raw: str | None, *, region: str | None = None) -> str | None:
    """E.164 form of `raw` ("+14155550123"); None for empty input.

    Numbers written without a country code are read in `region` (default
    `PHONE_DEFAULT_REGION`). Raises InvalidPhoneNumber when the text is not a valid number.
    """
    if raw is None or not raw.strip():
        return None
    try:
        parsed = phonenumbers.parse(raw, region or settings.PHONE_DEFAULT_REGION)
    except phonenumbers.NumberParseException as exc:
        raise InvalidPhoneNumber(f"{raw!r} is not a phone number: {exc}") from exc
    if not phonenumbers.is_valid_number(parsed):
        raise InvalidPhoneNumber(f"{raw!r} is not a valid phone number")
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)
