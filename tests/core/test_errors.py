"""Every API error, whatever raised it, is JSON {"code", "detail"} with the right status."""

import pytest
from django.test import Client

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
