"""GET /api/v1/integrity/runs/latest/: the newest finished run of every check, as
`integrity --json` prints it (with the API's value rules: times with `Z`, null for absent)."""

from __future__ import annotations

import contextlib
import json
from datetime import timedelta
from io import StringIO

import pytest
from django.contrib.auth.models import Permission
from django.core.management import call_command
from django.utils import timezone
from openapi_schema_validator import OAS30Validator, validate

from evoflow.integrity import IntegrityCheck, registered
from evoflow.integrity.runner import integrity_run, run_document
from evoflow.models import IntegrityRun
from tests.core.factories import UserFactory

pytestmark = pytest.mark.django_db

LATEST = "/api/v1/integrity/runs/latest/"
FIXED = IntegrityCheck(
    id="test.fixed",
    description="two of ten",
    sql="SELECT 2, 10, ARRAY['7', '8']",
    warning_count=1,
    error_ratio=0.5,
)


def view_permission() -> Permission:
    return Permission.objects.get(codename="view_integrityrun", content_type__app_label="evoflow")


@pytest.fixture
def staff_client(api_client):
    user = UserFactory(is_staff=True)
    user.user_permissions.add(view_permission())
    api_client.force_authenticate(user=user)
    return api_client


def command_json(*args: str) -> dict:
    out = StringIO()
    # The exit code says "warning"; the document is what matters here.
    with contextlib.suppress(SystemExit):
        call_command("integrity", "--json", *args, stdout=out, stderr=StringIO())
    return json.loads(out.getvalue())


def as_api(document: dict) -> dict:
    """The command's document with the API's value rules (docs/api.md) applied."""

    def time(value: str | None) -> str | None:
        return value.replace("+00:00", "Z") if value else value

    return {
        **document,
        "started_at": time(document["started_at"]),
        "finished_at": time(document["finished_at"]),
        "error": document["error"] or None,
        "checks": [
            {
                **check,
                "description": check["description"] or None,
                "error": check["error"] or None,
                "thresholds": check["thresholds"] or None,
            }
            for check in document["checks"]
        ],
    }


def test_latest_is_the_document_the_command_prints(staff_client):
    with registered(FIXED):
        printed = command_json()

        response = staff_client.get(LATEST)

    assert response.status_code == 200
    assert response.json() == as_api(printed)
    assert response.json()["finished_at"].endswith("Z")
    fixed = next(check for check in printed["checks"] if check["id"] == FIXED.id)
    assert fixed["thresholds"] == {
        "warning_count": 1,
        "error_count": None,
        "warning_ratio": None,
        "error_ratio": 0.5,
    }


def test_latest_is_the_newest_finished_run_not_a_live_one(staff_client):
    with registered(FIXED):
        older = integrity_run()
        newer = integrity_run()
    IntegrityRun.objects.filter(pk=older.pk).update(finished_at=timezone.now() - timedelta(hours=1))
    IntegrityRun.objects.create(status="running")
    IntegrityRun.objects.create(status="queued", trigger="admin")

    body = staff_client.get(LATEST).json()

    assert body["run_id"] == newer.pk
    assert body == as_api(run_document(newer))


def test_a_run_of_some_checks_or_a_dry_run_never_hides_a_failing_check(staff_client):
    broken = IntegrityCheck(
        id="test.broken", description="nine of ten", sql="SELECT 9, 10, ARRAY['1']", error_count=1
    )
    fine = IntegrityCheck(
        id="test.fine", description="none fails", sql="SELECT 0, 10, ARRAY[]::text[]"
    )
    with registered(broken, fine):
        # Given the daily run of every check, with test.broken at error
        everything = integrity_run(trigger="schedule")
        # When a one-check repair, a one-check command run and a dry run come after it
        integrity_run(check_ids=[fine.id], fix=True, trigger="admin-repair")
        integrity_run(check_ids=[fine.id])
        integrity_run(fix=True, dry_run=True)

        body = staff_client.get(LATEST).json()

    assert (body["run_id"], body["status"]) == (everything.pk, "error")
    assert {check["id"]: check["status"] for check in body["checks"]}["test.broken"] == "error"


@pytest.mark.parametrize("live_status", [None, "running", "queued"])
def test_no_finished_run_is_a_404_with_its_own_code(staff_client, live_status):
    if live_status:
        IntegrityRun.objects.create(status=live_status)
    # A finished run of one check does not answer for the others
    with registered(FIXED):
        integrity_run(check_ids=[FIXED.id])

    response = staff_client.get(LATEST)

    assert response.status_code == 404
    assert response.json() == {
        "code": "no_integrity_run",
        "detail": "No integrity run of every check has finished yet.",
    }


def test_a_user_with_the_view_permission_may_read_it(api_client):
    user = UserFactory(is_staff=False)
    user.user_permissions.add(view_permission())
    api_client.force_authenticate(user=user)
    with registered(FIXED):
        integrity_run()

    assert api_client.get(LATEST).status_code == 200


def test_a_superuser_may_read_it(api_client):
    api_client.force_authenticate(user=UserFactory(is_staff=True, is_superuser=True))
    with registered(FIXED):
        integrity_run()

    assert api_client.get(LATEST).status_code == 200


def test_staff_without_the_view_permission_is_refused_as_in_the_admin(api_client):
    # The admin index hides the runs from such a user; the API does too
    api_client.force_authenticate(user=UserFactory(is_staff=True))
    with registered(FIXED):
        integrity_run()

    response = api_client.get(LATEST)

    assert response.status_code == 403
    assert response.json() == {
        "code": "permission_denied",
        "detail": "Reading integrity runs needs the evoflow.view_integrityrun permission.",
    }


def test_other_users_are_refused(api_client):
    with registered(FIXED):
        integrity_run()

    anonymous = api_client.get(LATEST)
    api_client.force_authenticate(user=UserFactory())
    plain_user = api_client.get(LATEST)

    assert anonymous.status_code in (401, 403)
    assert anonymous.json()["code"] == "not_authenticated"
    assert plain_user.status_code == 403
    assert plain_user.json()["code"] == "permission_denied"


def test_writing_methods_are_not_allowed(staff_client):
    response = staff_client.post(LATEST, {}, format="json")

    assert response.status_code == 405
    assert response.json()["code"] == "method_not_allowed"


def test_the_endpoint_and_its_response_are_in_the_openapi_schema(staff_client):
    with registered(FIXED):
        integrity_run()
        body = staff_client.get(LATEST).json()
    schema = staff_client.get("/api/schema/", HTTP_ACCEPT="application/json").json()

    operation = schema["paths"]["/api/v1/integrity/runs/latest/"]["get"]
    assert operation["operationId"] == "integrity_runs_latest"
    response_schema = operation["responses"]["200"]["content"]["application/json"]["schema"]
    # The real response validates against the documented one, with every key documented
    validate(
        body,
        {**response_schema, "components": schema["components"]},
        cls=OAS30Validator,
    )
    component = schema["components"]["schemas"][response_schema["$ref"].rsplit("/", 1)[1]]
    assert set(component["properties"]) == set(body)
    check_ref = component["properties"]["checks"]["items"]["$ref"].rsplit("/", 1)[1]
    assert set(schema["components"]["schemas"][check_ref]["properties"]) == set(body["checks"][0])
