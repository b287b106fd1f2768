"""Fixtures shared by the whole suite."""

from __future__ import annotations

import os
from collections.abc import Iterator
from urllib.parse import quote

import pgtrigger
import pytest
from django.conf import settings
from rest_framework.test import APIClient

from tests.core.factories import UserFactory


@pytest.fixture(autouse=True, scope="session")
def flush_may_truncate_guarded_tables() -> Iterator[None]:
    """A transactional test's flush TRUNCATEs every table; the audit tables and the conversations
    refuse TRUNCATE (`evoflow.db.refuse_truncate`), so the flush, and only it, lifts those
    triggers (pgtrigger's transaction-local setting)."""
    from django.apps import apps
    from django.db.backends.postgresql.operations import DatabaseOperations

    guards = [
        f"{model._meta.label}:{trigger.name}"
        for model in apps.get_models()
        for trigger in getattr(model._meta, "triggers", ())
        if trigger.name.endswith("_no_truncate")
    ]
    original = DatabaseOperations.execute_sql_flush

    def execute_sql_flush(self: DatabaseOperations, sql_list: list[str]) -> None:
        with pgtrigger.ignore(*guards):
            original(self, sql_list)

    DatabaseOperations.execute_sql_flush = execute_sql_flush  # type: ignore[method-assign]
    yield
    DatabaseOperations.execute_sql_flush = original  # type: ignore[method-assign]


@pytest.fixture
def api_client() -> APIClient:
    return APIClient()


@pytest.fixture
def user(db):
    return UserFactory()


@pytest.fixture
def authenticated_client(api_client: APIClient, user) -> APIClient:
    api_client.force_authenticate(user=user)
    return api_client


@pytest.fixture
def subprocess_env(django_db_setup) -> dict[str, str]:
    """Environment for a child process (worker, command, server) that uses the test database.

    It depends on django_db_setup so the test database exists and the settings name it by the
    time they are read here, whether or not the test itself is marked django_db.
    """
    database = settings.DATABASES["default"]
    credentials = quote(database["USER"], safe="")
    if database.get("PASSWORD"):
        credentials += ":" + quote(database["PASSWORD"], safe="")
    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "evoflow.settings_test",
        "DATABASE_URL": (
            f"postgres://{credentials}@{database['HOST']}:{database['PORT']}/{database['NAME']}"
        ),
        "PYTHONUNBUFFERED": "1",
    }
