"""Tasks, the resume schedule, enrichment on stub creation, and `manage.py crm_simulator`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid

import pytest
import requests
from django_q.models import OrmQ, Schedule
from django_q.signing import SignedPackage

from journeys.models import Contact
from journeys.services import session_start
from journeys.tasks import contacts_enrich_task, sessions_advance_task, sessions_resume_due_task
from tests.helpers import PROJECT_ROOT, free_port, wait_for
from tests.journeys.factories import ContactFactory, JourneyFactory

pytestmark = pytest.mark.django_db


def _queued() -> list[tuple[str, tuple]]:
    tasks = [SignedPackage.loads(row.payload) for row in OrmQ.objects.order_by("id")]
    return [(task["func"], task["args"]) for task in tasks]


def test_the_resume_schedule_runs_every_minute():
    schedule = Schedule.objects.get(name="journeys.resume_due_sessions")

    assert (schedule.func, schedule.schedule_type, schedule.minutes) == (
        "journeys.tasks.sessions_resume_due_task",
        Schedule.MINUTES,
        1,
    )
    assert sessions_resume_due_task() == {"resumed": 0, "restarted_stalled": 0}


def test_a_new_stub_enqueues_its_enrichment_and_an_existing_contact_does_not(
    settings, crm_simulator
):
    settings.JOURNEYS_ENRICH_CONTACTS = True
    journey = JourneyFactory(allow_reentry=True)
    new_contact = uuid.uuid4()
    known = ContactFactory(name="Known")

    first = session_start(journey_id=journey.pk, contact_id=str(new_contact))
    second = session_start(journey_id=JourneyFactory().pk, contact_id=str(known.pk))

    assert _queued() == [
        ("journeys.tasks.contacts_enrich_task", ([str(new_contact)],)),
        ("journeys.tasks.sessions_advance_task", ([first],)),
        ("journeys.tasks.sessions_advance_task", ([second],)),
    ]
    # The task the worker runs fills the stub from the CRM.
    assert contacts_enrich_task([str(new_contact)]) == 1
    assert (
        Contact.objects.get(pk=new_contact).name
        == crm_simulator.generated_contact(str(new_contact))["name"]
    )


def test_the_advance_task_delivered_twice_runs_each_step_once():
    journey = JourneyFactory()
    session_id = session_start(journey_id=journey.pk, contact_id=str(uuid.uuid4()))

    first = sessions_advance_task([session_id])
    second = sessions_advance_task([session_id])

    assert (first["claimed"], first["steps"], first["completed"]) == (1, 5, 1)
    assert (second["claimed"], second["steps"]) == (0, 0)


@pytest.mark.slow
def test_the_crm_simulator_command_serves_until_interrupted(subprocess_env):
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "manage.py", "crm_simulator", "--port", str(port), "--seed", "5"],
        cwd=PROJECT_ROOT,
        env=subprocess_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:

        def up() -> bool:
            try:
                return requests.get(f"{base}/_control/faults", timeout=1).status_code == 200
            except requests.ConnectionError:
                return False

        assert wait_for(up, timeout=30)
        contact_id = str(uuid.uuid4())
        contact = requests.get(f"{base}/api/v1/contacts/{contact_id}", timeout=5).json()
    finally:
        os.killpg(process.pid, signal.SIGINT)
        stdout, _ = process.communicate(timeout=10)

    from journeys.simulator import CrmSimulator

    assert contact == CrmSimulator(seed=5).generated_contact(contact_id)
    assert f"crm simulator listening on {base}" in stdout.decode()
