"""`manage.py ensure_schedules`: create or update every recurring task; safe to repeat."""

from django.core.management.base import BaseCommand

from evoflow.schedules import schedules_ensure


class Command(BaseCommand):
    help = "Create or update every schedule of evoflow (idempotent; migrate also does this)."

    def handle(self, *args, **options) -> None:
        for schedule in schedules_ensure():
            self.stdout.write(
                f"{schedule.name}: {schedule.func} ({schedule.get_schedule_type_display()}, "
                f"next {schedule.next_run:%Y-%m-%d %H:%M} UTC)"
            )
