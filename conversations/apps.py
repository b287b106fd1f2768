from django.apps import AppConfig


class ConversationsConfig(AppConfig):
    name = "conversations"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django.db.models.signals import post_delete, post_save

        from conversations.models import FacebookPage
        from conversations.services.pages import page_pk_cache_invalidate

        # The page id -> primary key cache of the webhook must not outlive a page row.
        post_save.connect(
            page_pk_cache_invalidate, sender=FacebookPage, dispatch_uid="page_pk_cache_save"
        )
        post_delete.connect(
            page_pk_cache_invalidate, sender=FacebookPage, dispatch_uid="page_pk_cache_delete"
        )
