"""The deliveries endpoints' part of the OpenAPI schema is valid and complete on its own."""

from __future__ import annotations

import warnings

from drf_spectacular.generators import SchemaGenerator
from openapi_spec_validator import validate

from deliveries.urls import urlpatterns


def test_the_deliveries_schema_is_valid_openapi_3_without_warnings(capsys):
    generator = SchemaGenerator(patterns=urlpatterns)

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        document = generator.get_schema(request=None, public=True)

    validate(document)
    assert "Warning" not in capsys.readouterr().err
    assert sorted(document["paths"]) == [
        "/events/",
        "/events/{event_id}/",
        "/events/{event_id}/guests/",
        "/events/{event_id}/messages/",
        "/guests/{guest_id}/",
        "/me/messages/",
    ]
    import_schema = document["paths"]["/events/{event_id}/guests/"]["post"]
    assert "invalid_guest_rows" in import_schema["description"]
