"""django-q2's task admin: operators view the queue; re-running or deleting tasks needs the
matching permissions (the "resubmit" action once re-ran tasks and deleted failure records for
view-only operators)."""

from __future__ import annotations

import uuid

import pytest
from django.test import Client
from django.utils import timezone
from django_q.models import Failure, OrmQ, Success, Task

from tests.core.factories import role_user

pytestmark = pytest.mark.django_db


def _task(*, success: bool) -> Task:
    now = timezone.now()
    return Task.objects.create(
        id=uuid.uuid4().hex,
        name=f"task-{uuid.uuid4().hex[:8]}",
        func="math.floor",
        args=(1.5,),
        kwargs={},
        result=1 if success else "boom",
        started=now,
        stopped=now,
        success=success,
    )


def _client(role: str) -> Client:
    client = Client()
    client.force_login(role_user(role))
    return client


def _offered(client: Client, path: str) -> list[str]:
    response = client.get(path)
    assert response.status_code == 200
    form = response.context["action_form"]
    return [] if form is None else [name for name, _ in form.fields["action"].choices if name]


def _resubmit(client: Client, path: str, task: Task) -> None:
    client.post(path, {"action": "resubmit_task", "_selected_action": [task.pk]})


@pytest.mark.parametrize("path", ["/admin/django_q/success/", "/admin/django_q/failure/"])
def test_an_operator_sees_the_task_lists_without_their_actions(path):
    _task(success=True)
    _task(success=False)

    assert _offered(_client("operator"), path) == []


def test_an_operator_cannot_rerun_a_task_nor_delete_a_failure():
    # Given a successful and a failed task
    done, failed = _task(success=True), _task(success=False)
    client = _client("operator")

    # When an operator posts the resubmit action on each list anyway
    _resubmit(client, "/admin/django_q/success/", done)
    _resubmit(client, "/admin/django_q/failure/", failed)

    # Then nothing is queued and the failure record stays
    assert OrmQ.objects.count() == 0
    assert Failure.objects.filter(pk=failed.pk).exists()


def test_a_superuser_resubmits_tasks():
    done, failed = _task(success=True), _task(success=False)
    client = _client("superuser")

    assert "resubmit_task" in _offered(client, "/admin/django_q/success/")
    assert "resubmit_task" in _offered(client, "/admin/django_q/failure/")
    _resubmit(client, "/admin/django_q/success/", done)
    _resubmit(client, "/admin/django_q/failure/", failed)

    assert OrmQ.objects.count() == 2
    assert Success.objects.filter(pk=done.pk).exists()
    assert not Failure.objects.filter(pk=failed.pk).exists()
