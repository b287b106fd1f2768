"""The integrity API: the latest finished run of every check, as `manage.py integrity --json`
prints it."""

from __future__ import annotations

from django.urls import path
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from evoflow.api.fields import OptionalTextField
from evoflow.api.permissions import PermissionRequired
from evoflow.errors import DomainError
from evoflow.integrity.runner import integrity_run_latest_finished, run_document


class NoIntegrityRun(DomainError):
    code = "no_integrity_run"
    status = 404


class CanViewIntegrityRuns(PermissionRequired):
    # The same permission the admin's runs and the dashboard ask for: staff status alone is not
    # enough there, so it is not here either.
    permission = "evoflow.view_integrityrun"
    message = "Reading integrity runs needs the evoflow.view_integrityrun permission."


class ThresholdsOutput(serializers.Serializer):
    warning_count = serializers.IntegerField(allow_null=True)
    error_count = serializers.IntegerField(allow_null=True)
    warning_ratio = serializers.FloatField(allow_null=True)
    error_ratio = serializers.FloatField(allow_null=True)


class IntegrityCheckResultOutput(serializers.Serializer):
    id = serializers.CharField()
    description = OptionalTextField(help_text="null when the check is no longer registered")
    status = serializers.ChoiceField(choices=["ok", "warning", "error", "failed"])
    failing_count = serializers.IntegerField()
    population = serializers.IntegerField()
    ratio = serializers.FloatField()
    sample_ids = serializers.ListField(child=serializers.CharField())
    duration_ms = serializers.FloatField()
    thresholds = ThresholdsOutput(
        allow_null=True, help_text="null when the check is no longer registered"
    )
    error = OptionalTextField()
    repaired_count = serializers.IntegerField(allow_null=True)


class IntegrityRunOutput(serializers.Serializer):
    run_id = serializers.IntegerField()
    status = serializers.ChoiceField(choices=["healthy", "warning", "error", "failed"])
    exit_code = serializers.IntegerField(allow_null=True)
    trigger = serializers.CharField()
    started_at = serializers.DateTimeField(allow_null=True)
    finished_at = serializers.DateTimeField(allow_null=True)
    fix = serializers.BooleanField()
    dry_run = serializers.BooleanField()
    error = OptionalTextField()
    checks = IntegrityCheckResultOutput(many=True)


class IntegrityRunLatestApi(APIView):
    permission_classes = [CanViewIntegrityRuns]

    @extend_schema(
        operation_id="integrity_runs_latest",
        tags=["integrity"],
        summary="Read the latest integrity run",
        responses={
            200: IntegrityRunOutput,
            404: OpenApiResponse(description="`no_integrity_run`: none has finished yet"),
        },
        description=(
            "The newest finished integrity run of every check, not a dry run, with each"
            " check's result (the document of `manage.py integrity --json`); a run of some"
            " checks (a repair, `integrity --check`) is never the answer. 404"
            " `no_integrity_run` before the first such run."
        ),
    )
    def get(self, request: Request) -> Response:
        run = integrity_run_latest_finished()
        if run is None:
            raise NoIntegrityRun("No integrity run of every check has finished yet.")
        document = run_document(run)
        # The API's value rules (docs/api.md): times in UTC with `Z`, null for what is absent.
        document["started_at"] = run.started_at
        document["finished_at"] = run.finished_at
        for check in document["checks"]:
            check["thresholds"] = check["thresholds"] or None
        return Response(IntegrityRunOutput(document).data)


urlpatterns = [
    path(
        "integrity/runs/latest/",
        IntegrityRunLatestApi.as_view(),
        name="integrity-runs-latest",
    ),
]
