"""Every API error, whatever raised it, is JSON {"code", "detail"} with the right status."""

import pytest
from django.test import Client

import evoflow.api.pagination  # noqa: F401  (its errors are among those checked below)
from evoflow.errors import DomainError
from tests.core.factories import role_user

pytestmark = [pytest.mark.django_db, pytest.mark.urls("tests.core.urls")]


@pytest.mark.parametrize(
    ("method", "path", "status", "code"),
    [
        ("get", "/api/test/bad-input/", 400, "validation_error"),
        ("get", "/api/test/needs-login/", 401, "not_authenticated"),
        ("get", "/api/test/forbidden/", 403, "permission_denied"),
        ("get", "/api/test/missing/", 404, "not_found"),
        ("get", "/api/no-such-endpoint/", 404, "not_found"),
        ("post", "/api/test/only-get/", 405, "method_not_allowed"),
        ("get", "/api/test/conflict/", 409, "session_exists"),
        ("get", "/api/test/throttled/", 429, "throttled"),
        ("get", "/api/test/broken/", 500, "server_error"),
    ],
)
def test_error_responses_share_one_shape(api_client, method, path, status, code):
    # When
    response = getattr(api_client, method)(path)

    # Then
    assert response.status_code == status
    assert response["Content-Type"].startswith("application/json")
    body = response.json()
    assert body["code"] == code
    assert isinstance(body["detail"], str)
    assert body["detail"]


def test_validation_error_names_the_field(api_client):
    body = api_client.get("/api/test/bad-input/").json()

    assert body == {
        "code": "validation_error",
        "detail": "contact_id: Must be a valid UUID.",
        "errors": {"contact_id": ["Must be a valid UUID."]},
    }


def test_a_django_validation_error_is_a_400_not_a_500(api_client):
    # A model field's validation error reaching a view is the client's bad input
    field = api_client.get("/api/test/django-field-error/")
    plain = api_client.get("/api/test/django-plain-error/")

    assert field.status_code == 400
    assert field.json() == {
        "code": "validation_error",
        "detail": "starts_at: 'notadate' is not a valid date.",
        "errors": {"starts_at": ["'notadate' is not a valid date."]},
    }
    assert plain.status_code == 400
    assert plain.json()["detail"] == "'notadate' value has an invalid format."


def test_domain_error_keeps_its_extra_fields(api_client):
    body = api_client.get("/api/test/conflict/").json()

    assert body == {"code": "session_exists", "detail": "A live session exists.", "session_id": 7}


def test_bad_token_is_authentication_failed(api_client):
    response = api_client.get("/api/test/needs-login/", HTTP_AUTHORIZATION="Token nope")

    assert response.status_code == 401
    assert response.json()["code"] == "authentication_failed"


def test_server_error_hides_the_exception_text(api_client):
    response = api_client.get("/api/test/broken/")

    assert response.json() == {"code": "server_error", "detail": "Internal server error."}
    assert b"secret-token-abc" not in response.content


def test_plain_django_500_under_api_is_json_too():
    client = Client(raise_request_exception=False)

    response = client.get("/api/test/broken-plain/")

    assert response.status_code == 500
    assert response.json() == {"code": "server_error", "detail": "Internal server error."}


def test_admin_keeps_html_errors(admin_client):
    response = admin_client.get("/admin/no-such-page/")

    assert response.status_code == 404
    assert response["Content-Type"].startswith("text/html")


def _domain_errors() -> list[type[DomainError]]:
    found: list[type[DomainError]] = []
    pending = list(DomainError.__subclasses__())
    while pending:
        error = pending.pop()
        found.append(error)
        pending.extend(error.__subclasses__())
    return found


def test_every_domain_error_declares_its_own_code_and_an_error_status():
    # Given every refusal of the project (the apps' modules are imported by Django's setup)
    errors = _domain_errors()

    # Then each names its own stable code, with a 4xx/5xx status, and no two share a code
    assert {"JourneyError", "DeliveriesError", "SyncRefused", "InvalidCursor"} <= {
        error.__name__ for error in errors
    }
    for error in errors:
        assert "code" in vars(error), error
        assert 400 <= error.status < 600, error
    codes = [error.code for error in errors]
    assert len(codes) == len(set(codes)), sorted(codes)


def test_a_domain_error_raised_in_a_view_is_answered_with_its_code_status_and_extra(
    api_client, monkeypatch
):
    # Given a service refusal with extra fields, raised where a view calls the service
    from journeys import services

    def refuse(**kwargs: object) -> None:
        raise services.InvalidFlow("The flow is invalid.", ["node a: no edge"])

    monkeypatch.setattr(services, "journey_validate", refuse)
    user = role_user("operator")
    api_client.force_authenticate(user)

    # When the API is asked
    response = api_client.post("/api/v1/journeys/", {"name": "x", "flow": {}}, format="json")

    # Then the one handler answers it: no view translated it
    assert response.status_code == 400
    assert response.json() == {
        "code": "invalid_flow",
        "detail": "The flow is invalid.",
        "errors": {"flow": ["node a: no edge"]},
    }
