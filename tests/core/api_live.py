"""A live API server for the contract tests: gunicorn (the documented server) on a free loopback
port, on the test database, with the two roles the contract is checked for and data to read.

The fuzzer and the generated client both talk HTTP to it, as a frontend would.
"""

from __future__ import annotations

import base64
import http.client
import secrets
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from django.contrib.auth.models import Group
from rest_framework.authtoken.models import Token

from conversations.services.pages import page_upsert
from evoflow.permissions import OPERATORS_GROUP, grant_operator_permissions
from tests.conversations.factories import ConversationFactory, MessageFactory
from tests.core.factories import UserFactory, role_user
from tests.deliveries.factories import EventGuestFactory, MessageDeliveryFactory
from tests.helpers import PROJECT_ROOT, free_port, process_group_stop, wait_for
from tests.journeys.factories import ContactFactory, JourneyFactory

# A Facebook page the live server knows; its token is never shown by the API.
LIVE_PAGE_ID = "123456789012345"


@dataclass(frozen=True)
class ApiAccounts:
    operator_token: str
    member_token: str
    member_id: int
    contact_id: str
    journey_id: int


def api_accounts_seed() -> ApiAccounts:
    """An operator (operators group, as `seed_demo` makes them), a non-staff member, and a little
    of every resource, so list and detail answers carry real rows."""
    # The group comes from a data migration, which a transactional test's flush removes.
    operators, _ = Group.objects.get_or_create(name=OPERATORS_GROUP)
    grant_operator_permissions()
    operator = UserFactory(username="contract-operator", is_staff=True)
    operator.groups.set([operators])
    # Not staff: an event host (the hosts group), the account a frontend's users have.
    member = role_user("host", username="contract-member")

    page = page_upsert(page_id=LIVE_PAGE_ID, name="Contract shop", access_token="EAAB-secret")
    for _ in range(2):
        conversation = ConversationFactory(page=page)
        MessageFactory.create_batch(3, conversation=conversation)

    journey = JourneyFactory(is_active=True)
    contact = ContactFactory()

    guest = EventGuestFactory(event__host=member, user=member)
    MessageDeliveryFactory(guest=guest, user=member)
    return ApiAccounts(
        operator_token=Token.objects.create(user=operator).key,
        member_token=Token.objects.create(user=member).key,
        member_id=member.pk,
        contact_id=str(contact.pk),
        journey_id=journey.pk,
    )


def _healthz_status(port: int) -> int | None:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        connection.request("GET", "/healthz")
        return connection.getresponse().status
    except OSError:
        return None
    finally:
        connection.close()


@contextmanager
def live_api_server(env: dict[str, str], *, log_path: Path) -> Iterator[str]:
    """gunicorn with the project's config on a free port, logging to `log_path`; yields its
    base URL."""
    port = free_port()
    server_env = {
        **env,
        # Production mode: the contract is what production answers (DEBUG pages are HTML).
        # Its secrets are made up for this server, as production would set its own.
        "DEBUG": "0",
        "ALLOWED_HOSTS": "127.0.0.1",
        "SECRET_KEY": secrets.token_urlsafe(50),
        "FB_APP_SECRET": secrets.token_hex(16),
        "FB_VERIFY_TOKEN": secrets.token_urlsafe(24),
        "FIELD_ENCRYPTION_KEY": base64.urlsafe_b64encode(secrets.token_bytes(32)).decode(),
        "CRM_API_TOKEN": secrets.token_urlsafe(24),
        # Fuzzers send bursts: the contract is checked, not the rate limits.
        "API_THROTTLE_ANON_RATE": "100000/min",
        "API_THROTTLE_USER_RATE": "100000/min",
        "LOG_LEVEL": "WARNING",
        "LOG_FORMAT": "text",
    }
    # The log goes to a file: a pipe nobody reads fills up under a fuzzer's thousands of
    # requests and then blocks the server on its next log line.
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                *(sys.executable, "-m", "gunicorn", "evoflow.wsgi:application"),
                *("--config", "gunicorn.conf.py", "--bind", f"127.0.0.1:{port}"),
                *("--workers", "2", "--threads", "4"),
            ],
            cwd=PROJECT_ROOT,
            env=server_env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        if not wait_for(lambda: _healthz_status(port) == 200, timeout=60, interval=0.2):
            process.kill()
            raise AssertionError(f"gunicorn did not start: {log_path.read_text()[-4000:]}")
        yield f"http://127.0.0.1:{port}"
    finally:
        process_group_stop(process, signal.SIGTERM, timeout=20)
