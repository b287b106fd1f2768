"""The Graph API `fields` parameter: `id,participants,messages.limit(20){id,from,message}`.

Parsed into `{name: FieldSpec}`; a nested edge keeps its `.limit(n)` and its own sub-fields.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field


class FieldsInvalid(ValueError):
    pass


@dataclass(frozen=True)
class FieldSpec:
    limit: int | None = None
    subfields: dict[str, FieldSpec] = field(default_factory=dict)


_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_MODIFIER = re.compile(r"\.(limit)\((\d+)\)")


def fields_parse(text: str) -> dict[str, FieldSpec]:
    specs, position = _parse_list(text.replace(" ", ""), 0)
    if position != len(text.replace(" ", "")):
        raise FieldsInvalid(f"unexpected {text[position:]!r} in fields")
    return specs


def _parse_list(text: str, position: int) -> tuple[dict[str, FieldSpec], int]:
    specs: dict[str, FieldSpec] = {}
    while position < len(text):
        match = _NAME.match(text, position)
        if match is None:
            raise FieldsInvalid(f"expected a field name at {position} in {text!r}")
        name, position = match.group(0), match.end()
        limit = None
        modifier = _MODIFIER.match(text, position)
        if modifier is not None:
            limit, position = int(modifier.group(2)), modifier.end()
        subfields: dict[str, FieldSpec] = {}
        if position < len(text) and text[position] == "{":
            subfields, position = _parse_list(text, position + 1)
            if position >= len(text) or text[position] != "}":
                raise FieldsInvalid(f"unclosed {{ after {name!r}")
            position += 1
        specs[name] = FieldSpec(limit=limit, subfields=subfields)
        if position < len(text) and text[position] == ",":
            position += 1
            continue
        break
    return specs, position
