"""The "operators" group: what people who run evoflow day to day may do in the admin.

The group itself is created by a data migration; its permissions are (re)granted after every
`migrate`, because each app's permissions only exist once that app has been migrated.
Operators may view everything of evoflow's apps and the task queue, and add or change the
records of evoflow's own apps; they may not delete, and they do not manage users or groups.
"""

from __future__ import annotations

from typing import Any

OPERATORS_GROUP = "operators"
OPERATOR_APPS = ("evoflow", "journeys", "conversations", "deliveries")
# Apps whose records operators only look at.
OPERATOR_VIEW_ONLY_APPS = ("django_q",)
# Records operators never change, even in their own apps: users, and the append-only history.
OPERATOR_READ_ONLY_MODELS = {
    ("evoflow", "user"),
    ("evoflow", "integrityrun"),
    ("evoflow", "integritycheckresult"),
}


def is_operator_permission(app_label: str, model: str, codename: str) -> bool:
    action = codename.split("_", 1)[0]
    if app_label in OPERATOR_VIEW_ONLY_APPS:
        return action == "view"
    if app_label not in OPERATOR_APPS or action == "delete":
        return False
    if (app_label, model) in OPERATOR_READ_ONLY_MODELS:
        # Viewing, plus the custom permissions such models declare (run_integrity, ...).
        return action not in {"add", "change"}
    return True


def grant_operator_permissions(sender: Any = None, using: str = "default", **kwargs: Any) -> None:
    """Give the operators group every permission its rule allows (idempotent)."""
    from django.contrib.auth.models import Group, Permission

    group = Group.objects.using(using).filter(name=OPERATORS_GROUP).first()
    if group is None:
        return
    wanted = [
        permission
        for permission in Permission.objects.using(using).select_related("content_type")
        if is_operator_permission(
            permission.content_type.app_label, permission.content_type.model, permission.codename
        )
    ]
    group.permissions.add(*wanted)
