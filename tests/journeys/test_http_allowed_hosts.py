"""http_request nodes only call hosts JOURNEYS_HTTP_ALLOWED_HOSTS allows (server-side request
forgery): refused when the flow is saved where the host is known, and again before every call."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from rest_framework.test import APIClient

from journeys.flows.flow import FlowInvalid, flow_validate, http_url_refusal
from journeys.models import Journey, JourneySession, JourneyStep, SessionStatus
from journeys.services import InvalidFlow, journey_create, journey_update, session_start
from tests.core.factories import role_user
from tests.helpers import PROJECT_ROOT, production_secrets
from tests.journeys.conftest import advance_all
from tests.journeys.factories import JourneyFactory, linear_flow


def _http_flow(url: str) -> dict:
    return linear_flow(("call", "http_request", {"url": url}), ("end", "exit", {}))


@pytest.mark.parametrize(
    ("allowed", "url", "refusal"),
    [
        (["127.0.0.1"], "http://127.0.0.1:8011/hooks/x", None),
        (["hooks.example.com"], "https://HOOKS.example.com/x?a=1", None),
        (["hooks.example.com:8443"], "https://hooks.example.com:8443/x", None),
        (["hooks.example.com:443"], "https://hooks.example.com/x", None),
        (["[::1]"], "http://[::1]:8011/x", None),
        (["*"], "https://anything.example.org/x", None),
        (
            ["hooks.example.com:8443"],
            "https://hooks.example.com/x",
            "the host 'hooks.example.com' is not in JOURNEYS_HTTP_ALLOWED_HOSTS",
        ),
        (
            ["hooks.example.com"],
            "http://169.254.169.254/latest/meta-data/",
            "the host '169.254.169.254' is not in JOURNEYS_HTTP_ALLOWED_HOSTS",
        ),
        (
            ["hooks.example.com"],
            "http://localhost:5432/",
            "the host 'localhost:5432' is not in JOURNEYS_HTTP_ALLOWED_HOSTS",
        ),
        (
            ["hooks.example.com"],
            "http://hooks.example.com@10.0.0.1/",
            "the URL 'http://hooks.example.com@10.0.0.1/' carries credentials; "
            "send them in a header instead",
        ),
        (["*"], "ftp://files.example.com/x", "the URL 'ftp://files.example.com/x' is not http(s)"),
        (["*"], "file:///etc/passwd", "the URL 'file:///etc/passwd' is not http(s)"),
        (
            [],
            "https://hooks.example.com/x",
            "http_request nodes are disabled (JOURNEYS_HTTP_ALLOWED_HOSTS is empty)",
        ),
    ],
)
def test_which_urls_the_allow_list_lets_through(settings, allowed, url, refusal):
    settings.JOURNEYS_HTTP_ALLOWED_HOSTS = allowed

    assert http_url_refusal(url) == refusal


def test_a_flow_calling_a_host_not_allowed_is_refused_naming_the_node(settings):
    settings.JOURNEYS_HTTP_ALLOWED_HOSTS = ["127.0.0.1", "localhost"]

    with pytest.raises(FlowInvalid) as error:
        flow_validate(_http_flow("http://10.1.2.3/admin/{{contact.id}}"))

    assert error.value.messages == [
        "node \"call\" (http_request): config.url: the host '10.1.2.3' is not in "
        "JOURNEYS_HTTP_ALLOWED_HOSTS"
    ]


def test_a_templated_host_is_left_to_the_run_time_check(settings):
    settings.JOURNEYS_HTTP_ALLOWED_HOSTS = ["127.0.0.1"]

    flow_validate(_http_flow("{{variables.hook_url}}"))
    flow_validate(_http_flow("https://{{variables.tenant}}.example.com/x"))


def test_with_an_empty_allow_list_every_http_request_node_is_refused(settings):
    settings.JOURNEYS_HTTP_ALLOWED_HOSTS = []

    with pytest.raises(FlowInvalid) as error:
        flow_validate(_http_flow("{{variables.hook_url}}"))

    assert error.value.messages == [
        'node "call" (http_request): config.url: http_request nodes are disabled '
        "(JOURNEYS_HTTP_ALLOWED_HOSTS is empty)"
    ]


@pytest.mark.django_db
def test_the_services_refuse_to_save_a_flow_with_a_host_not_allowed(settings):
    settings.JOURNEYS_HTTP_ALLOWED_HOSTS = ["hooks.example.com"]

    with pytest.raises(InvalidFlow) as error:
        journey_create(name="SSRF", flow=_http_flow("http://127.0.0.1:5432/"))

    assert error.value.messages == [
        "node \"call\" (http_request): config.url: the host '127.0.0.1:5432' is not in "
        "JOURNEYS_HTTP_ALLOWED_HOSTS"
    ]
    assert Journey.objects.count() == 0


@pytest.mark.django_db
def test_a_journey_saved_before_the_list_narrowed_can_be_renamed_but_not_given_a_new_flow(
    settings,
):
    journey = journey_create(name="Hook", flow=_http_flow("http://127.0.0.1:8011/hooks/a"))
    settings.JOURNEYS_HTTP_ALLOWED_HOSTS = ["hooks.example.com"]

    renamed = journey_update(journey_id=journey.pk, name="Hook (off)", is_active=False)
    with pytest.raises(InvalidFlow) as error:
        journey_update(journey_id=journey.pk, flow=_http_flow("http://127.0.0.1:8011/hooks/b"))

    assert (renamed.name, renamed.is_active, renamed.version) == ("Hook (off)", False, 1)
    assert error.value.messages == [
        "node \"call\" (http_request): config.url: the host '127.0.0.1:8011' is not in "
        "JOURNEYS_HTTP_ALLOWED_HOSTS"
    ]
    journey.refresh_from_db()
    assert journey.flow == _http_flow("http://127.0.0.1:8011/hooks/a")


@pytest.mark.django_db
def test_the_api_refuses_a_flow_with_a_host_not_allowed(settings):
    settings.JOURNEYS_HTTP_ALLOWED_HOSTS = ["127.0.0.1"]
    client = APIClient()
    client.force_authenticate(role_user("operator"))

    response = client.post(
        "/api/v1/journeys/",
        {"name": "SSRF", "flow": _http_flow("https://internal.corp/x")},
        format="json",
    )

    assert response.status_code == 400
    assert response.json()["code"] == "invalid_flow"
    assert response.json()["errors"]["flow"] == [
        "node \"call\" (http_request): config.url: the host 'internal.corp' is not in "
        "JOURNEYS_HTTP_ALLOWED_HOSTS"
    ]
    assert Journey.objects.count() == 0


def _run(flow: dict, variables: dict | None = None) -> JourneySession:
    journey = JourneyFactory(flow=flow)  # the factory skips validation, like an old journey
    session_id = session_start(
        journey_id=journey.pk, contact_id=str(uuid.uuid4()), variables=variables
    )
    advance_all()
    return JourneySession.objects.get(pk=session_id)


@pytest.mark.django_db
def test_a_templated_url_to_a_host_not_allowed_fails_the_node_without_a_request(
    crm_simulator, settings
):
    settings.JOURNEYS_HTTP_ALLOWED_HOSTS = ["hooks.example.com"]

    session = _run(
        _http_flow("{{variables.target}}"), {"target": settings.CRM_BASE_URL + "/hooks/x"}
    )

    host = settings.CRM_BASE_URL.removeprefix("http://")
    assert session.status == SessionStatus.FAILED
    assert session.error["message"] == (
        f"the host {host!r} is not in JOURNEYS_HTTP_ALLOWED_HOSTS; no request was sent"
    )
    assert session.error["attempts"] == 1  # not retryable: another attempt cannot succeed
    step = JourneyStep.objects.get(session=session)
    assert (step.node_id, step.status) == ("call", "failed")
    assert "hooks" not in crm_simulator.counters.snapshot()["idempotency_keys"]


@pytest.mark.django_db
def test_a_flow_saved_while_allowed_fails_at_run_time_once_the_list_narrows(
    crm_simulator, settings
):
    journey = journey_create(name="Hook", flow=_http_flow(settings.CRM_BASE_URL + "/hooks/x"))
    settings.JOURNEYS_HTTP_ALLOWED_HOSTS = ["hooks.example.com"]

    session_id = session_start(journey_id=journey.pk, contact_id=str(uuid.uuid4()))
    advance_all()

    session = JourneySession.objects.get(pk=session_id)
    assert session.status == SessionStatus.FAILED
    assert "is not in JOURNEYS_HTTP_ALLOWED_HOSTS; no request was sent" in session.error["message"]
    assert "hooks" not in crm_simulator.counters.snapshot()["idempotency_keys"]


@pytest.fixture
def redirecting_server() -> Iterator[tuple[str, list[str]]]:
    """A local server whose /hop answers 302 towards /landing; records the paths it served."""
    served: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            served.append(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            self.rfile.read(length)
            if self.path == "/hop":
                self.send_response(302)
                self.send_header("Location", f"http://127.0.0.1:{port}/landing")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            body = json.dumps({"ok": True}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}", served
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.django_db
def test_a_redirect_is_not_followed_past_the_allow_list(redirecting_server, settings):
    base_url, served = redirecting_server
    settings.JOURNEYS_HTTP_ALLOWED_HOSTS = ["127.0.0.1"]

    session = _run(_http_flow(base_url + "/hop"))

    assert session.status == SessionStatus.FAILED
    assert session.error["message"] == (
        f"POST {base_url}/hop answered HTTP 302 (redirects are not followed)"
    )
    assert served == ["/hop"]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("debug", "expected"),
    [("1", ["127.0.0.1", "localhost"]), ("0", [])],
)
def test_the_default_allow_list_depends_on_debug(debug, expected):
    code = (
        "import json; from django.conf import settings; "
        "print(json.dumps(settings.JOURNEYS_HTTP_ALLOWED_HOSTS))"
    )
    env = {
        **{name: value for name, value in os.environ.items() if not name.startswith("JOURNEYS_")},
        "DJANGO_SETTINGS_MODULE": "evoflow.settings",
        "DEBUG": debug,
        "DATABASE_URL": "postgres://nobody@127.0.0.1:1/none",
        **production_secrets(),
        "CRM_BASE_URL": "https://crm.example.com",
    }

    output = subprocess.run(
        [sys.executable, "-c", f"import django; django.setup(); {code}"],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )

    assert json.loads(output.stdout) == expected
