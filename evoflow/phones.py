"""Phone numbers: kept as typed, and normalised to E.164 for matching.

One normaliser and one E.164 column rule for every model with a phone (users, guests,
deliveries).
"""

from __future__ import annotations

from typing import Any

import phonenumbers
from django.conf import settings
from django.db.models import Q


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


# What the database accepts in a `phone_e164` column: "+", a country code, at most 15 digits.
E164_PATTERN = r"^\+[1-9][0-9]{6,14}$"


def phone_e164_or_none(raw: str | None) -> str | None:
    """`phone_to_e164(raw)`, or None when `raw` is not a valid number.

    Services refuse bad numbers; a row written around them (admin, raw model saves) keeps its
    text but matches nobody, and the integrity checks list it.
    """
    try:
        return phone_to_e164(raw)
    except InvalidPhoneNumber:
        return None


def e164_column_valid(field: str = "phone_e164") -> Q:
    """The CheckConstraint condition of an E.164 column: NULL (no number) or E.164."""
    return Q(**{f"{field}__isnull": True}) | Q(**{f"{field}__regex": E164_PATTERN})


def phone_e164_refresh(instance: Any, save_kwargs: dict[str, Any]) -> None:
    """For a model's `save()`: set `phone_e164` from `phone`, and save it along with `phone`.

    Call it with the keyword arguments `save()` received, before calling the parent's.
    """
    instance.phone_e164 = phone_e164_or_none(instance.phone)
    update_fields = save_kwargs.get("update_fields")
    if update_fields is not None and "phone" in update_fields:
        save_kwargs["update_fields"] = {*update_fields, "phone_e164"}
