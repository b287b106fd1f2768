"""The API's defences against what any client can send: bounded metric labels, throttling, and
a database outage answered 503 instead of a traceback."""

from __future__ import annotations

import json
import os
import textwrap

import pytest
from rest_framework.authtoken.models import Token

from tests.core.factories import UserFactory
from tests.helpers import free_port, run_python

pytestmark = pytest.mark.django_db


def _request_series(client) -> set[str]:
    body = client.get("/metrics").content.decode()
    return {
        line.rsplit(" ", 1)[0]
        for line in body.splitlines()
        if line.startswith(("evoflow_http_requests_total{", "evoflow_http_request_seconds_count{"))
    }


def test_invented_methods_and_paths_do_not_grow_the_metrics(client):
    # Given one request of each kind an attacker can vary: an invented method, an unknown path
    client.generic("BREW", "/api/v1/journeys/")
    client.get("/no/such/path/0")
    client.generic("BREW", "/no/such/path/0")
    _request_series(client)  # the scrape counts itself too
    before = _request_series(client)

    # When 300 more requests invent methods and paths
    for number in range(100):
        client.generic(f"M{number}X", "/api/v1/journeys/")
        client.get(f"/no/such/path/{number}")
        client.generic(f"Q{number}", f"/{number}/{number}")

    # Then the series are the same: methods became "other", paths "unmatched"
    after = _request_series(client)
    assert after == before
    assert any('method="other"' in series and 'route="unmatched"' in series for series in after)
    assert not any("M1X" in series or "/no/such" in series for series in after)


def _throttle_script(requests: str) -> str:
    prologue = textwrap.dedent(
        """
        import django, json
        django.setup()
        from django.test import Client
        client = Client(HTTP_HOST="127.0.0.1")
        answers = []
        """
    )
    return prologue + textwrap.dedent(requests) + "\nprint(json.dumps(answers))\n"


def test_anonymous_api_requests_are_throttled_per_ip_and_the_webhook_is_not(subprocess_env):
    # Given a process allowing 3 anonymous API requests a minute
    script = _throttle_script(
        """
        from django.conf import settings
        for _ in range(4):
            response = client.get("/api/")
            answers.append([response.status_code, response.json(), response.get("Retry-After")])
        verify = {"hub.mode": "subscribe", "hub.challenge": "42",
                  "hub.verify_token": settings.FB_VERIFY_TOKEN}
        for _ in range(6):
            answers.append([client.get("/webhooks/messenger/", verify).status_code])
        """
    )
    env = {**subprocess_env, "API_THROTTLE_ANON_RATE": "3/min"}

    # When it gets 4 API requests, then 6 webhook verifications from the same address
    result = run_python("-c", script, env=env)

    # Then the 4th API request is 429 `throttled` with Retry-After; Meta is never throttled
    assert result.returncode == 0, result.stderr
    answers = json.loads(result.stdout.strip().splitlines()[-1])
    assert [answer[0] for answer in answers[:3]] == [200, 200, 200]
    status, body, retry_after = answers[3]
    assert status == 429
    assert body["code"] == "throttled"
    assert 0 < int(retry_after) <= 60
    assert [answer[0] for answer in answers[4:]] == [200] * 6


@pytest.mark.django_db(transaction=True)
def test_authenticated_api_requests_are_throttled_per_user(subprocess_env):
    # Given two users and a process allowing each 2 API requests a minute
    first, second = UserFactory(), UserFactory()
    tokens = [Token.objects.create(user=first).key, Token.objects.create(user=second).key]
    script = _throttle_script(
        f"""
        for key in {tokens!r}:
            for _ in range(3):
                response = client.get("/api/v1/me/messages/", HTTP_AUTHORIZATION="Token " + key)
                answers.append([response.status_code, response.json().get("code")])
        """
    )
    env = {**subprocess_env, "API_THROTTLE_USER_RATE": "2/min"}

    # When each asks three times
    result = run_python("-c", script, env=env)

    # Then each user's third request is refused, and the first user's use costs the second nothing
    assert result.returncode == 0, result.stderr
    answers = json.loads(result.stdout.strip().splitlines()[-1])
    assert answers == [[200, None], [200, None], [429, "throttled"]] * 2


def test_a_bad_throttle_rate_stops_the_process():
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "evoflow.settings_test",
        "API_THROTTLE_USER_RATE": "lots",
    }

    result = run_python("-c", "import django; django.setup()", env=env)

    assert result.returncode != 0
    assert "API_THROTTLE_USER_RATE must be a rate like 120/min" in result.stderr


def test_the_api_answers_503_while_the_database_is_down():
    # Given a process whose database does not answer, and an API client with a token
    script = textwrap.dedent(
        """
        import django, json
        django.setup()
        from django.test import Client
        client = Client(HTTP_HOST="127.0.0.1")
        answers = []
        for path in ("/api/v1/journeys/", "/api/v1/me/messages/"):
            response = client.get(path, HTTP_AUTHORIZATION="Token " + "a" * 40)
            answers.append([response.status_code, response.json(), response.get("Retry-After")])
        # and a view outside DRF under /api/ that reads the database
        from django.test import override_settings
        with override_settings(ROOT_URLCONF="tests.core.urls"):
            response = client.get("/api/test/plain-database-read/")
            answers.append([response.status_code, response.json(), response.get("Retry-After")])
        print(json.dumps(answers))
        """
    )
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "evoflow.settings_test",
        "DATABASE_URL": f"postgres://postgres@127.0.0.1:{free_port()}/nothing",
    }

    # When it asks two API endpoints and a view outside DRF
    result = run_python("-c", script, env=env)

    # Then each is 503 `database_unavailable`, logged once per request without a traceback
    assert result.returncode == 0, result.stderr
    answers = json.loads(result.stdout.strip().splitlines()[-1])
    for status, body, retry_after in answers:
        assert status == 503
        assert body["code"] == "database_unavailable"
        assert retry_after == "5"
    assert len(answers) == 3
    assert result.stderr.count("database unavailable during GET /api/") == 3
    assert "Traceback" not in result.stderr
