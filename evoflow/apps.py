from django.apps import AppConfig
from django.contrib.admin.apps import AdminConfig


class EvoflowConfig(AppConfig):
    """The project package is also an app: users, integrity runs, shared infrastructure.

    The core imports no app. Each app registers what the core runs for it (its schedules, its
    demo seeder, that operators may use it, its dashboard tile) from its own `ready()`, and its
    integrity checks in its `integrity` module; the core only iterates those registries.
    """

    name = "evoflow"
    verbose_name = "evoflow"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from datetime import time

        from django.db.models.signals import post_migrate
        from django_q.models import Schedule

        from evoflow import integrity, permissions, schedules, tasks
        from evoflow.demo import DEMO_STAGE_FIRST, DEMO_STAGE_LAST, demo_seeder_register
        from evoflow.integrity import checks  # noqa: F401 - registers the project's own checks
        from evoflow.integrity.tasks import INTEGRITY_SCHEDULED_TASK

        permissions.operator_app_register(self.label)
        # The daily integrity run, at a quiet hour.
        schedules.schedule_register(
            schedules.ScheduleSpec(
                name="integrity.daily",
                func=INTEGRITY_SCHEDULED_TASK,
                schedule_type=Schedule.DAILY,
                daily_at=time(3, 15),
            )
        )
        # The demo accounts come first (later seeders use them); the integrity run over all the
        # demo data comes last, so the dashboard's colours and trend start from it.
        demo_seeder_register("evoflow.demo.demo_accounts_seed", stage=DEMO_STAGE_FIRST)
        demo_seeder_register("evoflow.demo.demo_integrity_seed", stage=DEMO_STAGE_LAST)

        post_migrate.connect(permissions.grant_operator_permissions, dispatch_uid="evoflow.ops")
        post_migrate.connect(schedules.ensure_after_migrate, dispatch_uid="evoflow.schedules")
        tasks.connect_request_id_signals()
        integrity.autodiscover()


class EvoflowAdminConfig(AdminConfig):
    """django.contrib.admin with evoflow's site (the operator dashboard as its index)."""

    default_site = "evoflow.admin_site.EvoflowAdminSite"
