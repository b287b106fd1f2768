"""django-q2's task actions, each behind the permission its effect needs.

django-q2's admin offers "Resubmit selected tasks to queue" to whoever sees a task list: on the
successful tasks it runs them again, on the failed ones it runs them again and deletes their
failure records. The operators group may only view the task queue, so here the action needs
the change permission of the list it is on, and on failed tasks also their delete permission.
`evoflow.admin_lists` registers django-q2's models with these mixins.
"""

from __future__ import annotations

import django_q.admin as django_q_admin
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

RESUBMIT_DESCRIPTION = "Resubmit selected tasks to queue"


class SuccessfulTaskActions(admin.ModelAdmin):
    actions = ["resubmit_task"]

    @admin.action(description=RESUBMIT_DESCRIPTION, permissions=["change"])
    def resubmit_task(self, request: HttpRequest, queryset: QuerySet) -> None:
        count = queryset.count()
        django_q_admin.resubmit_task(self, request, queryset)
        self.message_user(request, f"{count} task(s) queued again.", messages.SUCCESS)


class FailedTaskActions(admin.ModelAdmin):
    actions = ["resubmit_task"]

    # Resubmitting a failed task also deletes its failure record (django-q2 does both).
    @admin.action(description=RESUBMIT_DESCRIPTION, permissions=["change", "delete"])
    def resubmit_task(self, request: HttpRequest, queryset: QuerySet) -> None:
        count = queryset.count()
        django_q_admin.resubmit_task(self, request, queryset)
        self.message_user(
            request,
            f"{count} task(s) queued again; their failure records are deleted.",
            messages.SUCCESS,
        )
