from django.apps import AppConfig


class DeliveriesConfig(AppConfig):
    name = "deliveries"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from deliveries import dashboard, signals  # noqa: F401 - signals connects the receivers
        from deliveries.permissions import HOST_PERMISSIONS, HOSTS_GROUP
        from evoflow.dashboard import tile_register
        from evoflow.demo import demo_seeder_register
        from evoflow.permissions import group_permissions_register, operator_app_register

        operator_app_register(self.label)
        group_permissions_register(HOSTS_GROUP, list(HOST_PERMISSIONS))
        demo_seeder_register("deliveries.demo.seed")
        tile_register(dashboard.tile_spec())
