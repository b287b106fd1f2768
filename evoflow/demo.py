"""Demo data for local runs: the demo accounts, and the registry of seeders each app adds to.

`manage.py seed_demo` (and through it `make run`) calls `demo_seed`. It runs every registered
seeder, in order, against one shared `DemoSeedContext`; a seeder creates or updates its demo
rows and adds a line to the context's summary. Seeders are idempotent: running `seed_demo`
again leaves exactly the same demo rows, with the same credentials.

An app contributes its demo data from its `AppConfig.ready()` with
`demo_seeder_register("app.demo.seed")`. Dotted paths rather than imported functions keep the
demo modules (which may use the simulators) out of every production process until seeding runs.

The order: seeders run by stage, `DEMO_STAGE_FIRST` (the demo accounts, which later seeders
use), then `DEMO_STAGE_APPS` (every app's data), then `DEMO_STAGE_LAST` (an integrity run over
all of it, for the dashboard); within a stage, in registration order, which is the order of
INSTALLED_APPS (Django calls the apps' `ready()` in that order).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from django.conf import settings
from django.contrib.auth.models import Group
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils.module_loading import import_string

from evoflow.models import User
from evoflow.permissions import OPERATORS_GROUP

DEMO_PASSWORD_ENV = "EVOFLOW_DEMO_PASSWORD"
# The documented password of the demo accounts on a local machine (DEBUG on). It is only
# ever used with DEBUG on, so it can never become a production password.
LOCAL_DEMO_PASSWORD = "evoflow-local-demo"
DEMO_OPERATOR_USERNAME = "operator"
DEMO_SUPERUSER_USERNAME = "admin"

ROLE_OPERATOR = "operator"
ROLE_SUPERUSER = "superuser"

# Stages, run in this order: later seeders may use what earlier ones created.
DEMO_STAGE_FIRST = 0  # the demo accounts
DEMO_STAGE_APPS = 100  # every app's demo data
DEMO_STAGE_LAST = 1000  # the dashboard's colours and trend start from a run of the demo data

# Dotted path -> stage, in registration order.
_seeders: dict[str, int] = {}


class DemoSeedRefused(Exception):
    """Seeding demo data is not allowed here, or its password is missing or too weak."""


@dataclass(frozen=True)
class DemoAccount:
    """A demo login: who it is, what it may do, and whether this run created it."""

    username: str
    role: str
    is_created: bool


@dataclass
class DemoSeedContext:
    """What every seeder receives, and what the command reports when they have all run."""

    password: str
    # False with DEBUG off: the password came from the environment and is not printed.
    is_password_printable: bool
    accounts: list[DemoAccount] = field(default_factory=list)
    summary: list[str] = field(default_factory=list)
    # Also seed data that breaks an invariant on purpose, for an operator to practise a repair
    # (`seed_demo --with-backlog`). Off by default: a fresh demo passes `integrity`.
    with_backlog: bool = False

    def account(self, role: str) -> DemoAccount:
        """The demo account with this role; LookupError before the accounts are seeded."""
        for account in self.accounts:
            if account.role == role:
                return account
        raise LookupError(f"no demo account with role {role!r}: seed the accounts first")


DemoSeeder = Callable[[DemoSeedContext], None]


def demo_seeder_register(path: str, *, stage: int = DEMO_STAGE_APPS) -> None:
    """Add a seeder (the dotted path of a `DemoSeeder`) to run at `stage` (see the module doc)."""
    _seeders[path] = stage


def demo_seeders() -> list[str]:
    """The registered seeders' paths, in the order `demo_seed` runs them."""
    registered = list(_seeders.items())
    return [
        path
        for _, _, path in sorted(
            (stage, position, path) for position, (path, stage) in enumerate(registered)
        )
    ]


def demo_password_resolve(*, is_production_allowed: bool = False) -> tuple[str, bool]:
    """The demo accounts' password and whether it may be printed.

    With DEBUG on: `EVOFLOW_DEMO_PASSWORD`, or the fixed local default. With DEBUG off the
    demo accounts would be real logins on a real system, so seeding refuses unless the caller
    explicitly allows it, and then the password must come from the environment and pass the
    project's password validators.
    """
    from_environment = os.environ.get(DEMO_PASSWORD_ENV, "")
    if settings.DEBUG:
        return (from_environment or LOCAL_DEMO_PASSWORD), True
    if not is_production_allowed:
        raise DemoSeedRefused(
            "DEBUG is off: demo accounts would be real logins on this system. "
            f"Pass --allow-production and set {DEMO_PASSWORD_ENV} if you really want them."
        )
    if not from_environment:
        raise DemoSeedRefused(f"DEBUG is off: set {DEMO_PASSWORD_ENV} to the demo password.")
    try:
        validate_password(from_environment)
    except ValidationError as exc:
        raise DemoSeedRefused(f"{DEMO_PASSWORD_ENV} is too weak: {' '.join(exc.messages)}") from exc
    return from_environment, False


def demo_seed(
    *,
    is_production_allowed: bool = False,
    seeders: Sequence[str] | None = None,
    with_backlog: bool = False,
) -> DemoSeedContext:
    """Run every registered seeder (or the given dotted paths) in order; returns what they did.

    Each seeder owns its transactions: some will call a simulator over HTTP first, and
    network calls never happen inside a transaction.
    """
    password, is_password_printable = demo_password_resolve(
        is_production_allowed=is_production_allowed
    )
    context = DemoSeedContext(
        password=password, is_password_printable=is_password_printable, with_backlog=with_backlog
    )
    for path in demo_seeders() if seeders is None else seeders:
        seeder: DemoSeeder = import_string(path)
        seeder(context)
    return context


@transaction.atomic(durable=True)
def demo_accounts_seed(context: DemoSeedContext) -> None:
    """Create or update the demo operator (staff, operators group) and the demo superuser."""
    try:
        operators = Group.objects.get(name=OPERATORS_GROUP)
    except Group.DoesNotExist:
        raise DemoSeedRefused(
            f"the {OPERATORS_GROUP!r} group does not exist; run `manage.py migrate` first"
        ) from None

    operator, is_operator_created = demo_user_upsert(
        username=DEMO_OPERATOR_USERNAME,
        password=context.password,
        first_name="Demo",
        last_name="Operator",
        is_superuser=False,
    )
    # Exactly the operators group: the operator's permissions are what that group grants.
    operator.groups.set([operators])
    context.accounts.append(
        DemoAccount(username=operator.username, role=ROLE_OPERATOR, is_created=is_operator_created)
    )

    superuser, is_superuser_created = demo_user_upsert(
        username=DEMO_SUPERUSER_USERNAME,
        password=context.password,
        first_name="Demo",
        last_name="Administrator",
        is_superuser=True,
    )
    context.accounts.append(
        DemoAccount(
            username=superuser.username, role=ROLE_SUPERUSER, is_created=is_superuser_created
        )
    )
    context.summary.append(
        f"demo accounts: {DEMO_OPERATOR_USERNAME!r} ({OPERATORS_GROUP} group) "
        f"and {DEMO_SUPERUSER_USERNAME!r} (superuser)"
    )


def demo_user_upsert(
    *, username: str, password: str, first_name: str, last_name: str, is_superuser: bool
) -> tuple[User, bool]:
    """Create the user or bring it back to the demo state; True when it was created.

    The row is locked so that two concurrent seeders cannot interleave their updates; the
    unique username backs `get_or_create` against two concurrent creations.
    """
    user, is_created = User.objects.select_for_update().get_or_create(
        username=username,
        defaults={"email": f"{username}@example.com"},
    )
    user.first_name = first_name
    user.last_name = last_name
    user.is_active = True
    user.is_staff = True
    user.is_superuser = is_superuser
    # Reset on every run, so the credentials that were printed are the ones that work.
    user.set_password(password)
    user.save(
        update_fields=[
            "first_name",
            "last_name",
            "is_active",
            "is_staff",
            "is_superuser",
            "password",
        ]
    )
    return user, is_created


def demo_integrity_seed(context: DemoSeedContext) -> None:
    """Run the integrity checks once over the demo data and store the run."""
    from evoflow.integrity.runner import integrity_run

    run = integrity_run(trigger="demo")
    context.summary.append(f"integrity: run {run.pk} stored, {run.status}")
