"""Factories for the project-level models, and users in each role of docs/permissions.md."""

from __future__ import annotations

import factory
from django.contrib.auth.models import Group, Permission

from evoflow.models import User
from evoflow.permissions import OPERATORS_GROUP, grant_operator_permissions

HOSTS_GROUP = "hosts"
# The roles of the permission matrix, from the least to the most trusted.
ROLES = ("anonymous", "guest", "host", "operator", "superuser")


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = User
        skip_postgeneration_save = True

    username = factory.Sequence(lambda n: f"user{n}")
    email = factory.LazyAttribute(lambda user: f"{user.username}@example.test")
    password = factory.django.Password("correct horse battery staple")


def _group(name: str) -> Group:
    # The migrations create the groups; a transactional test's flush empties the table, so they
    # are created again here and given their permissions the way `migrate` does.
    group, created = Group.objects.get_or_create(name=name)
    if created or not group.permissions.exists():
        grant_operator_permissions()
    return group


def role_user(role: str, **fields: object) -> User:
    """A user in one role: `guest` (logged in, no permission), `host` (the hosts group),
    `operator` (staff, the operators group) or `superuser`."""
    if role == "guest":
        return UserFactory(**fields)
    if role == "host":
        user = UserFactory(**fields)
        user.groups.add(_group(HOSTS_GROUP))
        return user
    if role == "operator":
        user = UserFactory(is_staff=True, **fields)
        user.groups.add(_group(OPERATORS_GROUP))
        return user
    if role == "superuser":
        return UserFactory(is_staff=True, is_superuser=True, **fields)
    raise ValueError(f"unknown role {role!r}")


def permission_grant(user: User, *names: str) -> User:
    """Give one user permissions ("app_label.codename") of their own; returns a fresh copy,
    since Django caches a user's permissions on the instance."""
    for name in names:
        app_label, codename = name.split(".", 1)
        user.user_permissions.add(
            Permission.objects.get(content_type__app_label=app_label, codename=codename)
        )
    return User.objects.get(pk=user.pk)
