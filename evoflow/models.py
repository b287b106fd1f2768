"""Project-wide models: the user, and the stored runs of the integrity checks."""

from __future__ import annotations

from django.contrib.auth.models import AbstractUser
from django.core.exceptions import ValidationError
from django.db import models
from django.db.models.functions import Now
from django.utils import timezone

from evoflow.phones import (
    InvalidPhoneNumber,
    e164_column_valid,
    phone_e164_refresh,
    phone_to_e164,
)


class User(AbstractUser):
    """A person who logs in: an operator, a host, or a guest reading their messages.

    `phone` is kept as typed; `phone_e164` is its normalised form, which deliveries match on.
    """

    phone = models.CharField(max_length=40, blank=True, default="")
    # NULL, not "", for "no number": a partial index skips NULLs and no two blanks ever match.
    phone_e164 = models.CharField(  # noqa: DJ001
        max_length=16, null=True, blank=True, editable=False
    )

    class Meta(AbstractUser.Meta):
        swappable = "AUTH_USER_MODEL"
        indexes = [
            models.Index(
                fields=["phone_e164"],
                name="user_phone_e164_idx",
                condition=models.Q(phone_e164__isnull=False),
            )
        ]
        constraints = [
            models.CheckConstraint(
                condition=e164_column_valid(),
                name="user_phone_e164_format",
            )
        ]

    def clean(self) -> None:
        super().clean()
        try:
            phone_to_e164(self.phone)
        except InvalidPhoneNumber as exc:
            raise ValidationError({"phone": str(exc)}) from exc

    def save(self, *args, **kwargs) -> None:
        # An unreadable number matches nobody; the integrity check lists such users.
        phone_e164_refresh(self, kwargs)
        super().save(*args, **kwargs)


class IntegrityRun(models.Model):
    """One invocation of the integrity checks (command, schedule or admin)."""

    class Status(models.TextChoices):
        QUEUED = "queued"  # requested from the admin, waiting for a worker
        RUNNING = "running"
        HEALTHY = "healthy"
        WARNING = "warning"
        ERROR = "error"
        FAILED = "failed"  # the run itself broke: exit code 3

    started_at = models.DateTimeField(default=timezone.now, db_default=Now())
    finished_at = models.DateTimeField(null=True, blank=True)
    # Renewed by the runner when it claims the run and after every check; a running run whose
    # heartbeat (or start, before the first beat) is older than the lease is failed as lost.
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.RUNNING)
    trigger = models.CharField(max_length=32, default="command")
    requested_checks = models.JSONField(default=list, blank=True)
    fix_requested = models.BooleanField(default=False)
    dry_run = models.BooleanField(default=False)
    exit_code = models.SmallIntegerField(null=True, blank=True)
    error = models.TextField(blank=True, default="")
    request_id = models.CharField(max_length=128, blank=True, default="")
    # The operator who asked for the run in the admin; NULL for the command and the schedule.
    requested_by = models.ForeignKey(
        "evoflow.User",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        editable=False,
    )

    class Meta:
        ordering = ["-started_at", "-id"]
        indexes = [models.Index(fields=["-started_at"], name="integrity_run_started_idx")]
        permissions = [
            ("run_integrity", "Can run the integrity checks"),
            ("repair_integrity", "Can run integrity repairs"),
        ]

    def __str__(self) -> str:
        return f"integrity run {self.pk} ({self.status})"

    @property
    def is_finished(self) -> bool:
        return self.status not in (self.Status.QUEUED, self.Status.RUNNING)


class IntegrityCheckResult(models.Model):
    """One check's outcome within a run: what failed, out of how many, and examples."""

    class Status(models.TextChoices):
        OK = "ok"
        WARNING = "warning"
        ERROR = "error"
        FAILED = "failed"  # the check's query itself failed (timeout, bad SQL)

    run = models.ForeignKey(IntegrityRun, on_delete=models.CASCADE, related_name="results")
    check_id = models.CharField(max_length=100)
    status = models.CharField(max_length=16, choices=Status.choices)
    failing_count = models.BigIntegerField(default=0)
    population = models.BigIntegerField(default=0)
    ratio = models.FloatField(default=0.0)
    sample_ids = models.JSONField(default=list, blank=True)
    duration_ms = models.FloatField(default=0.0)
    error = models.TextField(blank=True, default="")
    repaired_count = models.BigIntegerField(null=True, blank=True)
    # An incremental evaluation read the rows changed since `since` and the rows that failed
    # last time; NULL: a full sweep read every row. `swept_at` is when the full sweep this
    # result builds on started, and `tracked_ids` every failing id of a check that evaluates
    # incrementally (up to TRACK_LIMIT), for its next evaluation to read again.
    since = models.DateTimeField(null=True, blank=True)
    swept_at = models.DateTimeField(null=True, blank=True)
    tracked_ids = models.JSONField(
        default=list, db_default=models.Value([], models.JSONField()), blank=True
    )
    created_at = models.DateTimeField(default=timezone.now, db_default=Now())

    class Meta:
        ordering = ["check_id"]
        constraints = [
            models.UniqueConstraint(
                fields=["run", "check_id"], name="integrity_result_once_per_run"
            )
        ]
        indexes = [
            # Each check's results newest first: the dashboard's latest result per check (one
            # probe per check) and the trend's time range of each check.
            models.Index(
                fields=["check_id", "-created_at", "-id"], name="integrity_result_latest_idx"
            )
        ]

    def __str__(self) -> str:
        return f"{self.check_id}: {self.status}"


class RateBucket(models.Model):
    """A token bucket shared by every process (see evoflow/ratelimit/); one row per key."""

    key = models.CharField(max_length=200, primary_key=True)
    rate = models.FloatField()  # tokens per second, as last configured by a caller
    capacity = models.FloatField()  # the largest burst
    # May go below zero: a caller reserves its token and waits for the debt to refill.
    tokens = models.FloatField()
    refilled_at = models.DateTimeField()
    # The service's own usage figure (percent of quota, from its headers): past the slow-down
    # threshold the refill rate shrinks.
    usage_percent = models.FloatField(default=0.0, db_default=0.0)
    # Throttled by the service: nobody calls before this.
    blocked_until = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return self.key
