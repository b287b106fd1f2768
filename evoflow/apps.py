from django.apps import AppConfig
from django.contrib.admin.apps import AdminConfig


class EvoflowConfig(AppConfig):
    """The project package is also an app: users, integrity runs, shared infrastructure."""

    name = "evoflow"
    verbose_name = "evoflow"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django.db.models.signals import post_migrate

        from evoflow import integrity, permissions, schedules, tasks

        post_migrate.connect(permissions.grant_operator_permissions, dispatch_uid="evoflow.ops")
        post_migrate.connect(schedules.ensure_after_migrate, dispatch_uid="evoflow.schedules")
        tasks.connect_request_id_signals()
        integrity.autodiscover()


class EvoflowAdminConfig(AdminConfig):
    """django.contrib.admin with evoflow's site (the operator dashboard as its index)."""

    default_site = "evoflow.admin_site.EvoflowAdminSite"
