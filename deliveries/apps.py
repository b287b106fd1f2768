from django.apps import AppConfig


class DeliveriesConfig(AppConfig):
    name = "deliveries"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from deliveries import dashboard, signals  # noqa: F401 - signals connects the receivers
        from deliveries.metrics import LINK_ACTIVITY
        from deliveries.permissions import HOST_PERMISSIONS, HOSTS_GROUP
        from evoflow.dashboard import tile_register
        from evoflow.demo import demo_seeder_register
        from evoflow.integrity.required_sql import required_sql_register
        from evoflow.metrics import scrape_collector_register
        from evoflow.permissions import group_permissions_register, operator_app_register

        operator_app_register(self.label)
        group_permissions_register(HOSTS_GROUP, list(HOST_PERMISSIONS))
        # D1 (linking on insert, following the guest, the update guard), D2 and D3 (the rule,
        # the append-only audit): `core.required_triggers` reports any missing or disabled.
        required_sql_register(
            app_label=self.label,
            triggers=(
                "deliveries.MessageDelivery:delivery_link_on_insert",
                "deliveries.MessageDelivery:delivery_update_guard",
                "deliveries.EventGuest:guest_link_backfill",
                "deliveries.UserLinkAudit:link_audit_append_only",
                "deliveries.UserLinkAudit:link_audit_no_truncate",
            ),
            function_files=("link_rule.sql",),
        )
        demo_seeder_register("deliveries.demo.seed")
        tile_register(dashboard.tile_spec())
        scrape_collector_register("deliveries.link_activity", LINK_ACTIVITY.collect)
