"""The custom user: phone kept raw and normalised to E.164; the operators group."""

import pytest
from django.contrib.auth.models import Group
from django.core.exceptions import ValidationError
from django.db import IntegrityError, connection

from tests.core.factories import UserFactory

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("+1 415 555 0123", "+14155550123"),
        ("(415) 555-0123", "+14155550123"),
        ("+44 20 7946 0958", "+442079460958"),
        ("", None),
        ("not a phone", None),
    ],
)
def test_save_normalises_the_phone(raw, expected):
    user = UserFactory(phone=raw)

    user.refresh_from_db()
    assert user.phone == raw
    assert user.phone_e164 == expected


def test_update_fields_with_phone_also_updates_the_normalised_form():
    user = UserFactory(phone="+14155550123")
    user.phone = "+14155550199"

    user.save(update_fields=["phone"])

    user.refresh_from_db()
    assert user.phone_e164 == "+14155550199"


def test_clean_rejects_an_invalid_phone():
    user = UserFactory.build(phone="12")

    with pytest.raises(ValidationError) as error:
        user.clean()
    assert "phone" in error.value.message_dict


def test_the_database_refuses_a_malformed_e164_value():
    user = UserFactory()

    with pytest.raises(IntegrityError), connection.cursor() as cursor:
        cursor.execute("UPDATE evoflow_user SET phone_e164 = '0123' WHERE id = %s", [user.pk])


def test_operators_group_can_view_and_run_checks_but_not_delete_or_manage_users():
    group = Group.objects.get(name="operators")
    codenames = set(group.permissions.values_list("codename", flat=True))

    assert {"view_integrityrun", "run_integrity", "repair_integrity", "view_task"} <= codenames
    assert not {code for code in codenames if code.startswith("delete_")}
    assert "change_user" not in codenames
    assert "add_user" not in codenames
