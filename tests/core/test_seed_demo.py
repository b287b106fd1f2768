"""`manage.py seed_demo`: idempotent demo accounts that really log in; refused in production."""

from __future__ import annotations

import json
from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from evoflow.demo import LOCAL_DEMO_PASSWORD, DemoSeedContext, demo_seed, demo_seeders
from evoflow.models import User

pytestmark = pytest.mark.django_db

DEMO_USERNAMES = ["admin", "operator"]
STRONG_PASSWORD = "plum-harbour-violet-27"


@pytest.fixture(autouse=True)
def local_mode_without_a_demo_password(settings, monkeypatch: pytest.MonkeyPatch) -> None:
    # Django's test set-up turns DEBUG off; `make run` runs with it on.
    settings.DEBUG = True
    monkeypatch.delenv("EVOFLOW_DEMO_PASSWORD", raising=False)


def seed(*args: str) -> str:
    out = StringIO()
    call_command("seed_demo", *args, stdout=out)
    return out.getvalue()


def test_seeding_twice_leaves_one_operator_who_logs_in_to_the_admin(client):
    # Given seed_demo has already run once
    first_output = seed()

    # When it runs again
    second_output = seed()

    # Then there is exactly one operator: staff, not superuser, in the operators group only
    operators = list(User.objects.filter(username="operator"))
    assert len(operators) == 1
    operator = operators[0]
    assert (operator.is_active, operator.is_staff, operator.is_superuser) == (True, True, False)
    assert list(operator.groups.values_list("name", flat=True)) == ["operators"]
    assert list(User.objects.filter(is_superuser=True).values_list("username", flat=True)) == [
        "admin"
    ]
    # And both runs printed the same working credentials
    for output in (first_output, second_output):
        assert f"username operator   password {LOCAL_DEMO_PASSWORD}" in output
        assert f"username admin      password {LOCAL_DEMO_PASSWORD}" in output
    assert "(created)" in first_output
    assert "(created)" not in second_output

    # And the operator logs in to the admin with them
    response = client.post(
        "/admin/login/?next=/admin/",
        {"username": "operator", "password": LOCAL_DEMO_PASSWORD},
    )
    assert response.status_code == 302
    assert response["Location"] == "/admin/"
    index = client.get("/admin/")
    assert index.status_code == 200
    assert index.context["user"].username == "operator"


def test_the_operator_has_the_operators_group_permissions_and_no_more():
    # When the demo accounts are seeded
    seed()

    # Then the operator may view and run the integrity checks but not manage users
    operator = User.objects.get(username="operator")
    assert operator.has_perm("evoflow.view_integrityrun")
    assert operator.has_perm("evoflow.run_integrity")
    assert not operator.has_perm("evoflow.change_user")
    assert not operator.has_perm("evoflow.delete_integrityrun")


def test_seeding_again_restores_a_changed_demo_account():
    # Given the operator's password was changed and the account demoted and deactivated
    seed()
    operator = User.objects.get(username="operator")
    operator.set_password("something-else-entirely")
    operator.is_active = False
    operator.is_staff = False
    operator.save(update_fields=["password", "is_active", "is_staff"])
    operator.groups.clear()

    # When seed_demo runs again
    seed()

    # Then the printed credentials work again and the account is back to its demo state
    operator.refresh_from_db()
    assert operator.check_password(LOCAL_DEMO_PASSWORD)
    assert (operator.is_active, operator.is_staff, operator.is_superuser) == (True, True, False)
    assert list(operator.groups.values_list("name", flat=True)) == ["operators"]
    assert User.objects.filter(username__in=DEMO_USERNAMES).count() == 2


def test_the_demo_password_comes_from_the_environment_when_set(monkeypatch):
    # Given a demo password in the environment
    monkeypatch.setenv("EVOFLOW_DEMO_PASSWORD", STRONG_PASSWORD)

    # When the demo accounts are seeded
    output = seed()

    # Then both accounts use it, and it is the one printed
    for username in DEMO_USERNAMES:
        assert User.objects.get(username=username).check_password(STRONG_PASSWORD)
    assert f"password {STRONG_PASSWORD}" in output
    assert LOCAL_DEMO_PASSWORD not in output


def test_json_output_lists_the_accounts():
    # When seed_demo prints JSON (as `make run` asks it to)
    document = json.loads(seed("--json"))

    # Then it is one document with both accounts and their credentials, and a summary line from
    # every registered seeder, the accounts' first
    assert document["accounts"] == [
        {
            "role": "operator",
            "username": "operator",
            "password": LOCAL_DEMO_PASSWORD,
            "created": True,
        },
        {
            "role": "superuser",
            "username": "admin",
            "password": LOCAL_DEMO_PASSWORD,
            "created": True,
        },
    ]
    assert document["summary"][0] == (
        "demo accounts: 'operator' (operators group) and 'admin' (superuser)"
    )
    assert len(document["summary"]) == len(demo_seeders())


def test_refuses_with_debug_off(settings):
    # Given production mode
    settings.DEBUG = False

    # When seed_demo runs without --allow-production
    with pytest.raises(CommandError, match="DEBUG is off.*--allow-production"):
        seed()

    # Then no demo account was created
    assert not User.objects.filter(username__in=DEMO_USERNAMES).exists()


def test_production_needs_the_password_from_the_environment(settings):
    # Given production mode, explicitly allowed, but no EVOFLOW_DEMO_PASSWORD
    settings.DEBUG = False

    # When seed_demo runs
    with pytest.raises(CommandError, match="set EVOFLOW_DEMO_PASSWORD"):
        seed("--allow-production")

    # Then no demo account was created
    assert not User.objects.filter(username__in=DEMO_USERNAMES).exists()


def test_production_refuses_a_weak_password(settings, monkeypatch):
    # Given production mode with a password the validators reject
    settings.DEBUG = False
    monkeypatch.setenv("EVOFLOW_DEMO_PASSWORD", "password")

    # When seed_demo runs
    with pytest.raises(CommandError, match="EVOFLOW_DEMO_PASSWORD is too weak"):
        seed("--allow-production")

    # Then no demo account was created
    assert not User.objects.filter(username__in=DEMO_USERNAMES).exists()


def test_production_seeds_with_the_given_password_and_does_not_print_it(settings, monkeypatch):
    # Given production mode, explicitly allowed, with a strong password in the environment
    settings.DEBUG = False
    monkeypatch.setenv("EVOFLOW_DEMO_PASSWORD", STRONG_PASSWORD)

    # When seed_demo runs
    output = seed("--allow-production")

    # Then the accounts use that password, which the output names but does not show
    assert User.objects.get(username="operator").check_password(STRONG_PASSWORD)
    assert STRONG_PASSWORD not in output
    assert "password (the value of EVOFLOW_DEMO_PASSWORD)" in output


def seeder_that_needs_the_operator(context: DemoSeedContext) -> None:
    """A later app's seeder: it uses the operator that the accounts seeder created."""
    operator = User.objects.get(username=context.account("operator").username)
    context.summary.append(f"later seeder saw {operator.username} in {operator.groups.get()}")


def test_seeders_run_in_order_with_a_shared_context():
    # Given the accounts seeder followed by one that relies on the accounts existing
    seeders = [
        "evoflow.demo.demo_accounts_seed",
        "tests.core.test_seed_demo.seeder_that_needs_the_operator",
    ]

    # When demo_seed runs them
    context = demo_seed(seeders=seeders)

    # Then the later seeder saw the operator, and both summaries are reported in order
    assert context.summary == [
        "demo accounts: 'operator' (operators group) and 'admin' (superuser)",
        "later seeder saw operator in operators",
    ]


def test_the_accounts_seed_first_the_apps_in_installed_order_and_the_integrity_run_last():
    # The apps register their seeders from their ready(); the stages decide the order.
    assert demo_seeders() == [
        "evoflow.demo.demo_accounts_seed",
        "journeys.demo.seed",
        "conversations.demo.seed",
        "deliveries.demo.seed",
        "evoflow.demo.demo_integrity_seed",
    ]
