"""JSON values the database cannot store (non-finite numbers, NUL characters) or that nest
too deeply are a 400 validation_error at the API, with nothing written, never a 500."""

from __future__ import annotations

import json
import uuid

import pytest

from journeys.models import Contact, Journey, JourneySession, ProcessedContactEvent
from tests.journeys.factories import JourneyFactory, linear_flow

pytestmark = pytest.mark.django_db

INFINITY = "1e400"  # valid JSON text that Python parses as float("inf")
NUL = '"a\\u0000b"'  # a JSON string holding a NUL character
DEEP = "[" * 40 + "]" * 40  # deeper than the API accepts, well within the decoder's limit
VERY_DEEP = "[" * 100_000 + "]" * 100_000  # beyond the decoder's recursion limit


def _body(fields, raw_value):
    """The JSON body of `fields` with the string "RAW" replaced by the raw JSON text."""
    return json.dumps(fields).replace('"RAW"', raw_value)


def _post(client, path, body):
    client.raise_request_exception = False
    return client.post(path, data=body, content_type="application/json")


def _nothing_written():
    return (
        JourneySession.objects.count(),
        Contact.objects.count(),
        ProcessedContactEvent.objects.count(),
    ) == (0, 0, 0)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (INFINITY, "numbers must be finite"),
        (NUL, "strings must not contain NUL (\\u0000)"),
        (DEEP, "values must not nest more than 32 levels deep"),
    ],
    ids=["infinity", "nul", "deep"],
)
def test_start_variables_jsonb_cannot_store_are_a_400(authenticated_client, value, message):
    # given a journey
    journey = JourneyFactory()

    # when a start carries such a variable
    response = _post(
        authenticated_client,
        f"/api/v1/journeys/{journey.pk}/start/",
        _body({"contact_id": str(uuid.uuid4()), "variables": {"x": "RAW"}}, value),
    )

    # then it is refused and nothing is written
    assert response.status_code == 400
    assert response.json()["code"] == "validation_error"
    assert response.json()["errors"] == {"variables": [message]}
    assert _nothing_written()


@pytest.mark.parametrize("value", [INFINITY, NUL, DEEP], ids=["infinity", "nul", "deep"])
def test_event_properties_jsonb_cannot_store_are_a_400(authenticated_client, value):
    # given a journey the event triggers
    JourneyFactory(triggers=[{"type": "event", "event": "signed_up"}])

    # when the event's properties hold such a value
    response = _post(
        authenticated_client,
        "/api/v1/contact-events/",
        _body(
            {
                "name": "signed_up",
                "contact_id": str(uuid.uuid4()),
                "message_id": "m1",
                "properties": {"x": "RAW"},
            },
            value,
        ),
    )

    # then it is refused and nothing is written (not even the message id)
    assert response.status_code == 400
    assert response.json()["code"] == "validation_error"
    assert list(response.json()["errors"]) == ["properties"]
    assert _nothing_written()


def test_a_body_nested_beyond_the_decoder_is_a_400(authenticated_client):
    # when an event's properties nest 100,000 levels deep
    response = _post(
        authenticated_client,
        "/api/v1/contact-events/",
        _body(
            {"name": "e", "contact_id": str(uuid.uuid4()), "properties": {"x": "RAW"}}, VERY_DEEP
        ),
    )

    # then it is refused and nothing is written
    assert response.status_code == 400
    assert response.json()["code"] == "validation_error"
    assert _nothing_written()


@pytest.mark.parametrize("field", ["flow", "triggers", "default_variables"])
def test_journey_json_fields_jsonb_cannot_store_are_a_400(authenticated_client, field):
    # given a journey body whose field (only) holds a NUL character
    def marked(value, is_marked):
        return "MARK" if is_marked else value

    body = {
        "name": "j",
        "flow": linear_flow(
            ("a", "set_variable", {"name": "v", "value": marked("ok", field == "flow")})
        ),
        "triggers": [{"type": "event", "event": marked("e", field == "triggers")}],
        "default_variables": {"x": marked("ok", field == "default_variables")},
    }
    text = json.dumps(body).replace('"MARK"', NUL)

    # when it is created
    response = _post(authenticated_client, "/api/v1/journeys/", text)

    # then it is refused and no journey exists
    assert response.status_code == 400
    assert response.json()["code"] == "validation_error"
    assert response.json()["errors"] == {field: ["strings must not contain NUL (\\u0000)"]}
    assert Journey.objects.count() == 0


def test_a_wait_of_infinite_days_is_refused(authenticated_client):
    # when a journey's wait lasts 1e400 days
    text = json.dumps({"name": "j", "flow": linear_flow(("a", "wait", {"days": 7}))})
    response = _post(authenticated_client, "/api/v1/journeys/", text.replace("7", INFINITY))

    # then it is refused (DRF's JSONField already refuses what strict JSON cannot encode)
    assert response.status_code == 400
    assert response.json()["code"] == "validation_error"
    assert response.json()["errors"] == {"flow": ["Value must be valid JSON."]}
    assert Journey.objects.count() == 0
