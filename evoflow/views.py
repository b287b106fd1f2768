"""Project-level endpoints: liveness, metrics and the API root."""

from __future__ import annotations

from django.db import DatabaseError, connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.urls import URLPattern, URLResolver, get_resolver
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET
from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.decorators import api_view, permission_classes
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.reverse import reverse

from evoflow import metrics


@never_cache
@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    """200 when the database answers a query, 503 otherwise."""
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    except DatabaseError:
        # Drop the broken connection so the next probe reconnects instead of reusing it.
        connection.close_if_unusable_or_obsolete()
        return JsonResponse(
            {
                "status": "unavailable",
                "code": "database_unavailable",
                "detail": "The database does not answer.",
            },
            status=503,
        )
    return JsonResponse({"status": "ok", "database": "ok"})


@never_cache
@require_GET
def metrics_view(request: HttpRequest) -> HttpResponse:
    body, content_type = metrics.render_latest()
    return HttpResponse(body, content_type=content_type)


API_VERSION_PREFIX = "api/v1/"


def _resource_links(request: Request) -> dict[str, str]:
    """Every API route under /api/v1/ that names a collection (no id in its path), by its URL
    name: found in the URL map, so a new app's lists appear here without being listed twice."""
    links: dict[str, str] = {}

    def walk(patterns: list[URLPattern | URLResolver], prefix: str) -> None:
        for pattern in patterns:
            route = prefix + str(pattern.pattern)
            if isinstance(pattern, URLResolver):
                walk(pattern.url_patterns, route)
            elif (
                route.startswith(API_VERSION_PREFIX)
                and "<" not in route
                and pattern.name is not None
            ):
                links[pattern.name] = request.build_absolute_uri("/" + route)

    walk(get_resolver().url_patterns, "")
    return dict(sorted(links.items()))


@extend_schema(
    operation_id="api_root",
    tags=["root"],
    summary="Where the API's resources are",
    description=(
        "Links to every collection of the API (by name), the schema, its documentation and "
        "the health check. Open to anyone: it grants nothing."
    ),
    responses=inline_serializer(
        "ApiRoot",
        {
            "resources": serializers.DictField(child=serializers.URLField()),
            "schema": serializers.URLField(),
            "docs": serializers.URLField(),
            "redoc": serializers.URLField(),
            "healthz": serializers.URLField(),
        },
    ),
)
@api_view(["GET"])
@permission_classes([AllowAny])
def api_root(request: Request) -> Response:
    """Where things are: the resources, the schema, the docs, health."""
    return Response(
        {
            "resources": _resource_links(request),
            "schema": reverse("schema", request=request),
            "docs": reverse("swagger-ui", request=request),
            "redoc": reverse("redoc", request=request),
            "healthz": request.build_absolute_uri("/healthz"),
        }
    )
