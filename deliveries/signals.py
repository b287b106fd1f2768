"""Model signals: what Python adds on the ORM path after the database has linked.

The link itself is made by the database triggers on every path (see `deliveries.models`); a
signal never decides it. On `save()` the trigger runs after Django's INSERT returned, so the
instance in memory does not know the user the database just gave it: the signal reads it back,
so code holding the instance sees what is stored, and counts the outcome for /metrics
(once the transaction commits).
"""

from __future__ import annotations

from typing import Any

from django.db.models.signals import post_save
from django.dispatch import receiver

from deliveries.metrics import deliveries_created_count
from deliveries.models import MessageDelivery


@receiver(post_save, sender=MessageDelivery, dispatch_uid="deliveries.delivery_saved")
def delivery_saved(sender: Any, instance: MessageDelivery, created: bool, **kwargs: Any) -> None:
    if not created:
        return
    instance.user_id = (
        MessageDelivery.objects.filter(pk=instance.pk).values_list("user_id", flat=True).first()
    )
    deliveries_created_count(linked=int(bool(instance.user_id)), unlinked=int(not instance.user_id))
