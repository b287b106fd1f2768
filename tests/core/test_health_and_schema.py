"""/healthz, /metrics and the OpenAPI schema and docs."""

import json
import os
import textwrap

import pytest
from openapi_spec_validator import validate

from tests.helpers import free_port, run_python

pytestmark = pytest.mark.django_db


def test_healthz_is_ok_when_the_database_answers(client):
    response = client.get("/healthz")

    assert response.status_code == 200
    assert response.json() == {"status": "ok", "database": "ok"}


def test_healthz_is_503_when_the_database_is_down():
    # Given a process whose DATABASE_URL points at a port where nothing listens
    script = textwrap.dedent(
        """
        import django, json
        django.setup()
        from django.test import Client
        response = Client(HTTP_HOST="127.0.0.1").get("/healthz")
        print(json.dumps({"status": response.status_code, "body": response.json()}))
        """
    )
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "evoflow.settings_test",
        "DATABASE_URL": f"postgres://postgres@127.0.0.1:{free_port()}/nothing",
    }

    # When it asks for /healthz
    result = run_python("-c", script, env=env)

    # Then it answers 503 with a JSON error, not a crash
    assert result.returncode == 0, result.stderr
    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    assert outcome["status"] == 503
    assert outcome["body"]["code"] == "database_unavailable"


def test_metrics_are_prometheus_text(client):
    client.get("/healthz")

    response = client.get("/metrics")

    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain")
    text = response.content.decode()
    assert 'evoflow_http_requests_total{method="GET",route="healthz",status="200"}' in text
    assert "evoflow_http_request_seconds_bucket" in text


def test_schema_is_a_valid_openapi_3_document(api_client):
    response = api_client.get("/api/schema/", {"format": "json"})

    assert response.status_code == 200
    document = json.loads(response.content)
    assert document["openapi"].startswith("3.")
    validate(document)


def test_api_docs_use_only_local_assets(api_client):
    response = api_client.get("/api/docs/")

    assert response.status_code == 200
    html = response.content.decode()
    assert "/static/drf_spectacular_sidecar/swagger-ui-dist/" in html
    assert "cdn" not in html.lower()
    assert "https://" not in html


def test_api_root_lists_the_schema_and_docs(api_client):
    body = api_client.get("/api/").json()

    assert body["schema"].endswith("/api/schema/")
    assert body["docs"].endswith("/api/docs/")


def test_the_site_root_leads_to_the_admin(client):
    response = client.get("/")

    assert response.status_code == 302
    assert response["Location"] == "/admin/"
