from django.apps import AppConfig


class ConversationsConfig(AppConfig):
    name = "conversations"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from datetime import time

        from django.conf import settings
        from django.db.models.signals import post_delete, post_save
        from django_q.models import Schedule

        from conversations import dashboard, metrics
        from conversations.models import FacebookPage
        from conversations.services.pages import page_pk_cache_invalidate
        from conversations.tasks import (
            SYNC_ACTIVE_PAGES_TASK,
            WEBHOOK_RECEIPTS_PRUNE_TASK,
            WEBHOOK_RECEIPTS_RETRY_TASK,
        )
        from evoflow.dashboard import tile_register
        from evoflow.demo import demo_seeder_register
        from evoflow.integrity.required_sql import required_sql_register
        from evoflow.metrics import scrape_collector_register
        from evoflow.permissions import operator_app_register
        from evoflow.schedules import ScheduleSpec, schedule_register

        # The page id -> primary key cache of the webhook must not outlive a page row.
        post_save.connect(
            page_pk_cache_invalidate, sender=FacebookPage, dispatch_uid="page_pk_cache_save"
        )
        post_delete.connect(
            page_pk_cache_invalidate, sender=FacebookPage, dispatch_uid="page_pk_cache_delete"
        )

        operator_app_register(self.label)
        # C4 (counters, forward-only last message), C8 (no DELETE outside the audited purge), C9
        # (edits applied forward, their history append-only), the fixed page id and message
        # conversation, the sync status machine: `core.required_triggers` reports any missing or
        # disabled.
        required_sql_register(
            app_label=self.label,
            triggers=(
                "conversations.FacebookPage:facebookpage_page_id_fixed",
                "conversations.Conversation:conversation_last_message_forward_only",
                "conversations.Conversation:conversation_version_bump",
                "conversations.Message:message_count_and_last_on_insert",
                "conversations.Message:message_count_on_delete",
                "conversations.Message:message_conversation_fixed",
                "conversations.Conversation:conversation_protect_delete",
                "conversations.Message:message_protect_delete",
                "conversations.PurgeRecord:purgerecord_append_only",
                "conversations.PurgeRecord:purgerecord_no_truncate",
                "conversations.Conversation:conversation_no_truncate",
                "conversations.Message:message_no_truncate",
                "conversations.Message:message_pending_edits_on_insert",
                "conversations.Message:message_text_change",
                "conversations.MessageEdit:messageedit_append_only",
                "conversations.SyncRun:syncrun_status_fsm",
            ),
        )
        # Failed webhook receipts are re-applied once their backoff (1 min doubling to 6 h) is
        # due.
        schedule_register(
            ScheduleSpec(
                name="conversations.webhook_receipts_retry",
                func=WEBHOOK_RECEIPTS_RETRY_TASK,
                schedule_type=Schedule.MINUTES,
                minutes=1,
            )
        )
        # Processed and rejected webhook receipts are kept 30 days, then deleted in small
        # batches.
        schedule_register(
            ScheduleSpec(
                name="conversations.webhook_receipts_prune",
                func=WEBHOOK_RECEIPTS_PRUNE_TASK,
                schedule_type=Schedule.DAILY,
                daily_at=time(3, 45),
            )
        )
        # An incremental Graph sync of every page with a token (SYNC_SCHEDULE_MINUTES).
        schedule_register(
            ScheduleSpec(
                name="conversations.sync_active_pages",
                func=SYNC_ACTIVE_PAGES_TASK,
                schedule_type=Schedule.MINUTES,
                minutes=settings.SYNC_SCHEDULE_MINUTES,
            )
        )
        # Every page's sync state on every scrape, from the database (F18).
        scrape_collector_register("conversations.sync", metrics.sync_state_families)
        demo_seeder_register("conversations.demo.seed")
        tile_register(dashboard.tile_spec())
