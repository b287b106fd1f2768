from django.apps import AppConfig


class JourneysConfig(AppConfig):
    name = "journeys"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django_q.models import Schedule

        from evoflow.dashboard import tile_register
        from evoflow.demo import demo_seeder_register
        from evoflow.integrity.required_sql import required_sql_register
        from evoflow.permissions import operator_app_register
        from evoflow.schedules import ScheduleSpec, schedule_register
        from journeys import dashboard
        from journeys.tasks import SESSIONS_RESUME_DUE_TASK

        operator_app_register(self.label)
        # J3: the session status machine (`core.required_triggers` watches it).
        required_sql_register(
            app_label=self.label, triggers=("journeys.JourneySession:journeys_session_status_fsm",)
        )
        # Wake sessions whose wait is over, restart sessions whose worker died.
        schedule_register(
            ScheduleSpec(
                name="journeys.resume_due_sessions",
                func=SESSIONS_RESUME_DUE_TASK,
                schedule_type=Schedule.MINUTES,
                minutes=1,
            )
        )
        demo_seeder_register("journeys.demo.seed")
        tile_register(dashboard.tile_spec())
