"""Serializers that keep the API's value rules (docs/api.md).

Output: an absent text is `null`, never `""`. Models store an absent text as `""` (Django's
convention for text columns); the API shows it as `null`, so a client tests one thing for "no
value" everywhere. `ApiModelSerializer` applies the rule to every blank-able text column of a
model serializer; `OptionalTextField` is the field for a serializer written by hand.

Input: a JSON body has only the fields the schema lists, and its values have the type the
schema gives them. DRF's fields coerce (`0`
becomes the text `"0"`, `"true"` a boolean, `"5"` an integer), so a body the schema calls
invalid would be accepted; `ApiInputSerializer` refuses a value of the wrong JSON type with
400 `validation_error` before the fields see it. Query strings are text by nature:
`query_filters` validates them, refusing an empty value instead of reading it as "absent".
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from django.db import models
from rest_framework import serializers
from rest_framework.request import Request


class OptionalTextField(serializers.CharField):
    """A read-only text that is `null` when empty."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("read_only", True)
        kwargs["allow_null"] = True
        kwargs.setdefault("allow_blank", True)
        super().__init__(**kwargs)

    # DRF's stubs say a field's representation is never None; this one's is.
    def to_representation(self, value: Any) -> str | None:  # type: ignore[override]
        text = super().to_representation(value) if value is not None else ""
        return text or None


# An output model serializer whose blank-able text columns read `null` when empty. (A comment:
# the schema would show a docstring as the description of every output.)
class ApiModelSerializer(serializers.ModelSerializer):
    def build_standard_field(
        self, field_name: str, model_field: models.Field
    ) -> tuple[type[serializers.Field], dict[str, Any]]:
        field_class, field_kwargs = super().build_standard_field(field_name, model_field)
        if (
            isinstance(model_field, models.CharField | models.TextField)
            and model_field.blank
            and not model_field.choices
        ):
            kwargs = {
                key: value
                for key, value in field_kwargs.items()
                if key in ("help_text", "label", "max_length", "source")
            }
            return OptionalTextField, kwargs
        return field_class, field_kwargs


# The JSON types each kind of field accepts, most specific first (a ChoiceField before the
# CharField family, since they are unrelated classes in DRF but both take text).
_JSON_TYPES: tuple[tuple[type[serializers.Field], tuple[type, ...], str], ...] = (
    (serializers.BooleanField, (bool,), "a boolean"),
    (serializers.IntegerField, (int,), "an integer"),
    (serializers.FloatField, (int, float), "a number"),
    (serializers.DecimalField, (int, float, str), "a number"),
    (serializers.ChoiceField, (str,), "a string"),
    (serializers.CharField, (str,), "a string"),
    (serializers.DateTimeField, (str,), "a date-time string"),
    (serializers.DateField, (str,), "a date string"),
    (serializers.UUIDField, (str,), "a string"),
    (serializers.DictField, (dict,), "an object"),
    (serializers.ListField, (list,), "an array"),
    (serializers.ListSerializer, (list,), "an array"),
    (serializers.Serializer, (dict,), "an object"),
)


def _json_type_error(field: serializers.Field, value: Any) -> str | None:
    for field_class, types, label in _JSON_TYPES:
        if isinstance(field, field_class):
            # A JSON boolean is a Python bool, which is also an int: never a number here.
            accepted = bool in types if isinstance(value, bool) else isinstance(value, types)
            return None if accepted else f"Must be {label}."
    return None


UNKNOWN_FIELD = "Unknown field."


# An input serializer of a JSON body: each value must have its field's JSON type (a null is
# left to the field, which refuses it unless it allows null), and a field the body does not take
# is refused rather than silently dropped (the schema says `additionalProperties: false`).
# (A comment, not a docstring: the schema would show a docstring as every body's description.)
class ApiInputSerializer(serializers.Serializer):
    def to_internal_value(self, data: Any) -> Any:
        if isinstance(data, Mapping):
            errors = {str(name): [UNKNOWN_FIELD] for name in data if name not in self.fields}
            for name, field in self.fields.items():
                if field.read_only or name not in data or data[name] is None:
                    continue
                message = _json_type_error(field, data[name])
                if message is not None:
                    errors[name] = [message]
            if errors:
                raise serializers.ValidationError(errors)
        return super().to_internal_value(data)


def query_filters(serializer_class: type[serializers.Serializer], request: Request) -> dict:
    """The validated filters of a list's query string; a filter sent empty (`?status=`) is a
    400, not "no filter" (which is what leaving it out means)."""
    names: list[str] = list(serializer_class().fields)
    empty = {
        name: ["May not be empty; leave the parameter out to not filter."]
        for name in names
        if request.query_params.get(name) == ""
    }
    if empty:
        raise serializers.ValidationError(empty)
    filters = serializer_class(data=request.query_params)
    filters.is_valid(raise_exception=True)
    return dict(filters.validated_data)
