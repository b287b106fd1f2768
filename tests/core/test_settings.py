"""Production mode refuses to start without its secrets; local mode has safe defaults."""

import os
import subprocess

import pytest

from evoflow.settings import LOCAL_SECRETS
from tests.helpers import production_secrets, run_python

SECRETS = [
    "SECRET_KEY",
    "FB_APP_SECRET",
    "FB_VERIFY_TOKEN",
    "FIELD_ENCRYPTION_KEY",
    "CRM_API_TOKEN",
]


PRODUCTION = {"DEBUG": "0", "DATABASE_URL": "postgres://app@db.internal:5432/evoflow"}


def run_settings(env_overrides: dict[str, str]) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if key not in [*SECRETS, "DEBUG"]}
    env.pop("DATABASE_URL", None)
    env.update(env_overrides)
    env["DJANGO_SETTINGS_MODULE"] = "evoflow.settings"
    script = (
        "import django; django.setup(); from django.conf import settings; print(settings.DEBUG)"
    )
    return run_python("-c", script, env=env)


def test_production_refuses_to_start_without_secrets():
    result = run_settings({"DEBUG": "0"})

    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr
    for name in [*SECRETS, "DATABASE_URL"]:
        assert name in result.stderr


def test_production_starts_with_every_secret():
    result = run_settings({"DEBUG": "false", **PRODUCTION, **production_secrets()})

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


def test_local_mode_fills_in_development_secrets():
    result = run_settings({"DEBUG": "1"})

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "True"


def test_a_malformed_boolean_is_a_clear_error():
    result = run_settings({"DEBUG": "maybe"})

    assert result.returncode != 0
    assert "DEBUG must be a boolean" in result.stderr


def test_the_local_env_file_fills_in_only_what_the_environment_lacks(tmp_path, monkeypatch):
    from evoflow.settings import load_local_env

    env_file = tmp_path / "env"
    env_file.write_text(
        "# a comment\nEVOFLOW_TEST_ONLY_A=from-file\n\nEVOFLOW_TEST_ONLY_B = file\n"
    )
    monkeypatch.delenv("EVOFLOW_TEST_ONLY_A", raising=False)
    monkeypatch.setenv("EVOFLOW_TEST_ONLY_B", "from-environment")

    load_local_env(env_file)

    assert os.environ["EVOFLOW_TEST_ONLY_A"] == "from-file"
    assert os.environ["EVOFLOW_TEST_ONLY_B"] == "from-environment"
    monkeypatch.delenv("EVOFLOW_TEST_ONLY_A")


def test_redis_url_moves_the_task_queue_to_redis():
    script = (
        "import django; django.setup(); from django.conf import settings; "
        "print(settings.Q_CLUSTER.get('redis'), 'orm' in settings.Q_CLUSTER)"
    )
    env = {**os.environ, "DEBUG": "1", "REDIS_URL": "redis://cache.internal:6379/3"}
    env["DJANGO_SETTINGS_MODULE"] = "evoflow.settings"

    result = run_python("-c", script, env=env)

    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["redis://cache.internal:6379/3", "False"]


def test_the_task_queue_defaults_to_the_database_and_keeps_timeout_below_retry():
    from django.conf import settings

    assert settings.Q_CLUSTER["orm"] == "default"
    assert "redis" not in settings.Q_CLUSTER
    assert settings.Q_CLUSTER["timeout"] < settings.Q_CLUSTER["retry"]
    assert 0 < settings.Q_CLUSTER["max_attempts"] < 100


def test_a_task_timeout_not_below_retry_is_refused():
    result = run_settings({"DEBUG": "1", "Q_TIMEOUT": "600", "Q_RETRY": "600"})

    assert result.returncode != 0
    assert "Q_TIMEOUT must be below Q_RETRY" in result.stderr


@pytest.mark.parametrize("name", SECRETS)
def test_production_refuses_each_placeholder_the_repository_ships(name):
    # Given good secrets, but one of them the local placeholder
    secrets = {**production_secrets(), name: LOCAL_SECRETS[name]}

    result = run_settings({**PRODUCTION, **secrets})

    # Then the process stops, naming that variable, and shows no secret's value
    assert result.returncode != 0
    assert f"{name} is a placeholder the repository ships for local runs" in result.stderr
    for other, value in secrets.items():
        if other != name:
            assert value not in result.stderr


def test_production_names_every_weak_secret_at_once():
    # Given short, repetitive and malformed secrets
    secrets = {
        "SECRET_KEY": "django-insecure-" + "ab12cd34ef" * 5,
        "FB_APP_SECRET": "short",
        "FB_VERIFY_TOKEN": "aaaaaaaaaaaaaaaaaaaa",
        "FIELD_ENCRYPTION_KEY": "not-a-fernet-key",
        "CRM_API_TOKEN": "evoflow-local-demo",
    }

    result = run_settings({**PRODUCTION, **secrets})

    # Then one line names each problem
    assert result.returncode != 0
    for line in (
        "SECRET_KEY is one of Django's generated development keys",
        "FB_APP_SECRET is 5 characters long; it needs at least 32",
        "FB_VERIFY_TOKEN has fewer than 5 distinct characters",
        "FIELD_ENCRYPTION_KEY is not a Fernet key",
        "CRM_API_TOKEN is a placeholder the repository ships for local runs",
    ):
        assert line in result.stderr


@pytest.mark.parametrize(
    ("keys", "problem"),
    [
        # 32 bytes of one value, other than the shipped zeros: a made-up key
        ("ERERERERERERERERERERERERERERERERERERERERERE=", "FIELD_ENCRYPTION_KEY is not random"),
        # rotation: a good first key and the shipped one to decrypt with
        (
            "{good},AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
            "FIELD_ENCRYPTION_KEY key 2 of 2 is the placeholder",
        ),
        ("{good},c2hvcnQ=", "FIELD_ENCRYPTION_KEY key 2 of 2 is not a Fernet key"),
    ],
)
def test_production_checks_every_fernet_key(keys, problem):
    secrets = production_secrets()
    secrets["FIELD_ENCRYPTION_KEY"] = keys.format(good=secrets["FIELD_ENCRYPTION_KEY"])

    result = run_settings({**PRODUCTION, **secrets})

    assert result.returncode != 0
    assert problem in result.stderr


def test_production_accepts_rotated_fernet_keys():
    secrets, other = production_secrets(), production_secrets()
    secrets["FIELD_ENCRYPTION_KEY"] += "," + other["FIELD_ENCRYPTION_KEY"]

    result = run_settings({**PRODUCTION, **secrets})

    assert result.returncode == 0, result.stderr
