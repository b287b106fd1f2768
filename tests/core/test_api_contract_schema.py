"""The schema's rules (docs/api.md) that hold for every operation, and the conventions the
server follows; the fuzzer and the generated client check the rest against a live server."""

from __future__ import annotations

import json

import pytest
from django.contrib.auth.models import Permission

from tests.conversations.factories import ConversationFactory
from tests.core.factories import UserFactory, role_user
from tests.journeys.factories import JourneyFactory

pytestmark = pytest.mark.django_db

METHODS = ("get", "post", "put", "patch", "delete")


@pytest.fixture
def user(db):
    # The value rules are checked past the permission check: an operator may use every endpoint.
    return role_user("operator")


@pytest.fixture
def schema(client) -> dict:
    return json.loads(client.get("/api/schema/", {"format": "json"}).content)


def _operations(schema: dict):
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            if method in METHODS:
                yield path, method, operation


def test_every_operation_has_a_tag_a_summary_and_its_generic_errors(schema):
    tags = {tag["name"] for tag in schema["tags"] if tag.get("description")}
    for path, method, operation in _operations(schema):
        label = f"{method.upper()} {path}"
        assert len(operation["tags"]) == 1, label
        assert operation["tags"][0] in tags, label
        assert operation.get("summary"), label
        responses = operation["responses"]
        expected = {"429", "503"}
        if path != "/api/":
            expected |= {"401", "403"}
        if "{" in path:
            expected.add("404")
        if "requestBody" in operation:
            expected |= {"400", "415"}
        assert expected <= set(responses), (label, sorted(responses))
        for status, response in responses.items():
            if status[0] in "45":
                assert response["content"]["application/json"]["schema"] == {
                    "$ref": "#/components/schemas/Error"
                }, (label, status)
        assert "Retry-After" in responses["429"]["headers"], label


def test_the_error_component_is_the_shape_the_server_answers(schema, api_client):
    error = schema["components"]["schemas"]["Error"]
    assert error["required"] == ["code", "detail"]

    body = api_client.get("/api/v1/journeys/").json()

    assert set(body) == {"code", "detail"}
    assert body["code"] == "not_authenticated"


def test_lists_document_their_page_envelope_and_parameters(schema):
    for path, _method, operation in _operations(schema):
        names = {parameter["name"] for parameter in operation.get("parameters", [])}
        if "cursor" not in names:
            continue
        assert "page_size" in names, path
        assert "page" not in names, path
        reference = operation["responses"]["200"]["content"]["application/json"]["schema"]
        component = reference["$ref"].rsplit("/", 1)[1]
        assert component.startswith("Paginated"), path
        assert set(schema["components"]["schemas"][component]["properties"]) == {
            "next",
            "previous",
            "results",
        }


def test_component_names_say_what_they_are(schema):
    names = set(schema["components"]["schemas"])
    assert not {"Input", "InputRequest", "Output"} & names
    assert not [name for name in names if name[-7:-4].isdigit() and name.endswith("Enum")]
    assert {"SessionStatus", "SyncStatus", "JourneyStartRequest", "ContactEventRequest"} <= names


def test_the_stream_documents_its_events_payload(schema):
    operation = schema["paths"]["/api/v1/sync-runs/{run_id}/stream/"]["get"]
    content = operation["responses"]["200"]["content"]
    assert content["text/event-stream"]["schema"] == {"$ref": "#/components/schemas/SyncRunOutput"}
    for event in ("`progress`", "`end`", "`timeout`", "`deleted`"):
        assert event in operation["description"]


def test_the_root_lists_every_collection(api_client):
    body = api_client.get("/api/").json()

    assert body["resources"]["conversation-list"].endswith("/api/v1/conversations/")
    assert body["resources"]["journey-list"].endswith("/api/v1/journeys/")
    assert body["resources"]["deliveries-my-messages"].endswith("/api/v1/me/messages/")
    assert not [url for url in body["resources"].values() if "{" in url or "<" in url]
    assert body["schema"].endswith("/api/schema/")


def test_page_is_refused_on_every_list_never_silently_ignored(authenticated_client):
    for path in ("/api/v1/journeys/", "/api/v1/events/", "/api/v1/me/messages/"):
        response = authenticated_client.get(path, {"page": "2"})

        assert response.status_code == 400, path
        assert response.json()["code"] == "validation_error"
        assert "page" in response.json()["errors"]


def test_an_empty_filter_is_refused_not_read_as_absent(authenticated_client):
    response = authenticated_client.get("/api/v1/journey-sessions/", {"journey": ""})

    assert response.status_code == 400
    assert response.json()["errors"] == {
        "journey": ["May not be empty; leave the parameter out to not filter."]
    }


@pytest.mark.parametrize(
    "body",
    [
        {"name": 0, "starts_at": "2027-01-01T19:00:00Z"},
        {"name": "Launch", "starts_at": 1_800_000_000},
        {"name": ["Launch"], "starts_at": "2027-01-01T19:00:00Z"},
    ],
)
def test_a_body_value_of_the_wrong_json_type_is_refused(authenticated_client, body):
    response = authenticated_client.post("/api/v1/events/", body, format="json")

    assert response.status_code == 400
    assert response.json()["code"] == "validation_error"


def test_a_form_encoded_body_is_415(authenticated_client):
    response = authenticated_client.post(
        "/api/v1/events/",
        {"name": "Launch", "starts_at": "2027-01-01T19:00:00Z"},
        format="multipart",
    )

    assert response.status_code == 415
    assert response.json()["code"] == "unsupported_media_type"


def test_absent_texts_are_null_and_times_end_in_z(authenticated_client):
    journey = JourneyFactory(description="")

    body = authenticated_client.get(f"/api/v1/journeys/{journey.pk}/").json()

    assert body["description"] is None
    assert body["created_at"].endswith("Z")


def test_a_conversation_without_a_participant_name_says_null(api_client):
    reader = UserFactory()
    reader.user_permissions.add(Permission.objects.get(codename="view_conversation"))
    api_client.force_authenticate(user=reader)
    ConversationFactory(participant_name="", last_message_text="")

    result = api_client.get("/api/v1/conversations/").json()["results"][0]

    assert result["participant_name"] is None
    assert result["last_message_text"] is None


@pytest.mark.parametrize("body", ["[]", "0", "false", '""', '"full"'])
def test_a_sync_request_whose_body_is_not_an_object_is_refused(api_client, body):
    # Before, a falsy body ([] or 0) was read as "no body" and accepted.
    syncer = UserFactory()
    syncer.user_permissions.add(Permission.objects.get(codename="add_syncrun"))
    api_client.force_authenticate(user=syncer)

    response = api_client.post(
        "/api/v1/pages/123456/sync/", data=body, content_type="application/json"
    )

    assert response.status_code == 400
    assert response.json()["errors"] == {"non_field_errors": ["the body is not a JSON object"]}


def test_a_body_field_the_operation_does_not_take_is_refused(authenticated_client):
    body = {"name": "Launch", "starts_at": "2027-01-01T19:00:00Z", "errors": {}}

    response = authenticated_client.post("/api/v1/events/", body, format="json")

    assert response.status_code == 400
    assert response.json()["errors"] == {"errors": ["Unknown field."]}


def test_request_bodies_are_closed_and_non_blank_texts_say_so(schema):
    event = schema["components"]["schemas"]["EventCreateRequest"]
    assert event["additionalProperties"] is False
    assert event["properties"]["name"]["pattern"] == r"\S"


def test_a_blank_name_is_refused_as_the_schema_says(authenticated_client):
    body = {"name": "\t", "starts_at": "2027-01-01T19:00:00Z"}

    response = authenticated_client.post("/api/v1/events/", body, format="json")

    assert response.status_code == 400
