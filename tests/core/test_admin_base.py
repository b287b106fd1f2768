"""The shared admin pieces: every change page reads its object id safely, and the read-only
bases refuse what they say they refuse."""

from __future__ import annotations

import pytest
from django.contrib import admin
from django.test import Client
from django.urls import reverse

import evoflow.admin  # noqa: F401  (registers every admin of the project)
from evoflow.admin_base import NoAddMixin, NoChangeMixin, NoDeleteMixin, ReadOnlyAdmin
from tests.core.factories import UserFactory

pytestmark = pytest.mark.django_db

# Ids no row has, that int() or PostgreSQL would refuse if they reached them unchecked.
BAD_OBJECT_IDS = ["%C2%B2", "99999999999999999999", "abc", "-1"]

MODEL_ADMINS = [
    pytest.param(model, model_admin, id=f"{model._meta.app_label}.{model._meta.model_name}")
    for model, model_admin in admin.site._registry.items()
]


@pytest.fixture
def admin_client() -> Client:
    client = Client()
    client.force_login(UserFactory(is_staff=True, is_superuser=True))
    return client


@pytest.mark.parametrize("object_id", BAD_OBJECT_IDS)
@pytest.mark.parametrize(("model", "model_admin"), MODEL_ADMINS)
def test_a_change_page_of_an_id_no_row_has_is_not_a_500(
    admin_client, model, model_admin, object_id
):
    # When the change page of an id that names no row is asked for
    opts = model._meta
    url = reverse(f"admin:{opts.app_label}_{opts.model_name}_change", args=["0"])
    response = admin_client.get(url.replace("/0/", f"/{object_id}/"))

    # Then the admin answers as for any unknown object
    assert response.status_code in (302, 404), response.status_code


@pytest.mark.parametrize(("model", "model_admin"), MODEL_ADMINS)
def test_the_permission_mixins_refuse_everyone(model, model_admin):
    # Given a superuser, who holds every permission the database can grant
    request = type("Request", (), {"user": UserFactory(is_staff=True, is_superuser=True)})()

    row = model()

    # Then what the admin's bases refuse is refused to them too, and a read-only row is shown
    if isinstance(model_admin, NoAddMixin):
        assert not model_admin.has_add_permission(request)
    if isinstance(model_admin, NoChangeMixin):
        assert not model_admin.has_change_permission(request, row)
    if isinstance(model_admin, NoDeleteMixin):
        assert not model_admin.has_delete_permission(request, row)
    if isinstance(model_admin, ReadOnlyAdmin):
        assert model_admin.has_view_permission(request, row)
