"""The "operators" group: what people who run evoflow day to day may do in the admin.

The group itself is created by a data migration; its permissions are (re)granted after every
`migrate`, because each app's permissions only exist once that app has been migrated.
Operators may view everything of evoflow's apps and the task queue, and add or change the
records of evoflow's own apps; they may not delete, and they do not manage users or groups.
Each app says that operators may use it from its `AppConfig.ready()` with
`operator_app_register(label)`, so this module names no app.

Other roles are groups an app defines (its data migration creates the group) with a fixed list
of permissions, registered with `group_permissions_register(group, permissions)` and granted by
the same hook after every `migrate`: the deliveries app's "hosts", for instance. What each role
may do, endpoint by endpoint: docs/permissions.md.
"""

from __future__ import annotations

from typing import Any

OPERATORS_GROUP = "operators"
# The apps whose records operators view, add and change (see `operator_app_register`).
_operator_apps: dict[str, None] = {}  # an ordered set
# Apps whose records operators only look at.
OPERATOR_VIEW_ONLY_APPS = ("django_q",)
# Records operators never change, even in their own apps: users, and the append-only history.
OPERATOR_READ_ONLY_MODELS = {
    ("evoflow", "user"),
    ("evoflow", "integrityrun"),
    ("evoflow", "integritycheckresult"),
}


# Other groups and the permissions ("app_label.codename") each is granted.
_group_permissions: dict[str, set[str]] = {}


def group_permissions_register(group: str, permissions: list[str]) -> None:
    """The group (created by the registering app's migration) holds these permissions."""
    if group == OPERATORS_GROUP:
        raise ValueError("the operators group's permissions follow its rule, not a list")
    _group_permissions.setdefault(group, set()).update(permissions)


def group_permissions() -> dict[str, frozenset[str]]:
    return {group: frozenset(names) for group, names in _group_permissions.items()}


def operator_app_register(app_label: str) -> None:
    """Operators may use this app: view, add and change its records (never delete)."""
    _operator_apps[app_label] = None


def operator_apps() -> tuple[str, ...]:
    return tuple(_operator_apps)


def is_operator_permission(app_label: str, model: str, codename: str) -> bool:
    action = codename.split("_", 1)[0]
    if app_label in OPERATOR_VIEW_ONLY_APPS:
        return action == "view"
    if app_label not in _operator_apps or action == "delete":
        return False
    if (app_label, model) in OPERATOR_READ_ONLY_MODELS:
        # Viewing, plus the custom permissions such models declare (run_integrity, ...).
        return action not in {"add", "change"}
    return True


def grant_operator_permissions(sender: Any = None, using: str = "default", **kwargs: Any) -> None:
    """Give the operators group every permission its rule allows, and every registered group
    its list (idempotent; a group that does not exist yet is skipped)."""
    from django.contrib.auth.models import Group, Permission

    everything = list(Permission.objects.using(using).select_related("content_type"))
    group = Group.objects.using(using).filter(name=OPERATORS_GROUP).first()
    if group is not None:
        group.permissions.add(
            *(
                permission
                for permission in everything
                if is_operator_permission(
                    permission.content_type.app_label,
                    permission.content_type.model,
                    permission.codename,
                )
            )
        )
    for name, wanted in group_permissions().items():
        other = Group.objects.using(using).filter(name=name).first()
        if other is not None:
            other.permissions.add(
                *(
                    permission
                    for permission in everything
                    if f"{permission.content_type.app_label}.{permission.codename}" in wanted
                )
            )
