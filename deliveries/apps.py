from django.apps import AppConfig


class DeliveriesConfig(AppConfig):
    name = "deliveries"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from deliveries import dashboard, signals  # noqa: F401 - signals connects the receivers
        from evoflow.dashboard import tile_register
        from evoflow.demo import demo_seeder_register
        from evoflow.permissions import operator_app_register

        operator_app_register(self.label)
        demo_seeder_register("deliveries.demo.seed")
        tile_register(dashboard.tile_spec())
