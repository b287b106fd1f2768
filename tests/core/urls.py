"""Routes that raise each kind of error, mounted beside the real ones for the error tests."""

from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.urls import include, path
from rest_framework import exceptions, generics, serializers
from rest_framework.decorators import api_view, permission_classes
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response

from evoflow.errors import DomainError
from evoflow.models import User


@api_view(["GET"])
@permission_classes([AllowAny])
def bad_input(request: Request) -> Response:
    raise exceptions.ValidationError({"contact_id": ["Must be a valid UUID."]})


@api_view(["GET"])
@permission_classes([AllowAny])
def django_field_error(request: Request) -> Response:
    raise DjangoValidationError({"starts_at": ["'notadate' is not a valid date."]})


@api_view(["GET"])
@permission_classes([AllowAny])
def django_plain_error(request: Request) -> Response:
    raise DjangoValidationError("'notadate' value has an invalid format.")


@api_view(["GET"])
def needs_login(request: Request) -> Response:
    return Response({"ok": True})


@api_view(["GET"])
@permission_classes([AllowAny])
def forbidden(request: Request) -> Response:
    raise exceptions.PermissionDenied()


@api_view(["GET"])
@permission_classes([AllowAny])
def missing(request: Request) -> Response:
    raise Http404("no such thing")


@api_view(["GET"])
@permission_classes([AllowAny])
def only_get(request: Request) -> Response:
    return Response({"ok": True})


class SessionExists(DomainError):
    code = "session_exists"
    status = 409


@api_view(["GET"])
@permission_classes([AllowAny])
def conflicting(request: Request) -> Response:
    raise SessionExists("A live session exists.", extra={"session_id": 7})


@api_view(["GET"])
@permission_classes([AllowAny])
def throttled(request: Request) -> Response:
    raise exceptions.Throttled(wait=3)


@api_view(["GET"])
@permission_classes([AllowAny])
def broken(request: Request) -> Response:
    raise RuntimeError("secret-token-abc must never reach the client")


class UserList(generics.ListAPIView):
    """A list with the project's default pagination."""

    permission_classes = [AllowAny]
    queryset = User.objects.all()

    class OutputSerializer(serializers.ModelSerializer):
        class Meta:
            model = User
            fields = ["id", "username"]

    serializer_class = OutputSerializer


def broken_plain(request: HttpRequest) -> HttpResponse:
    raise RuntimeError("plain view failure")


def plain_database_read(request: HttpRequest) -> HttpResponse:
    """A view outside DRF that reads the database."""
    return JsonResponse({"users": User.objects.count()})


urlpatterns = [
    path("api/test/bad-input/", bad_input),
    path("api/test/django-field-error/", django_field_error),
    path("api/test/django-plain-error/", django_plain_error),
    path("api/test/needs-login/", needs_login),
    path("api/test/forbidden/", forbidden),
    path("api/test/missing/", missing),
    path("api/test/only-get/", only_get),
    path("api/test/conflict/", conflicting),
    path("api/test/throttled/", throttled),
    path("api/test/broken/", broken),
    path("api/test/broken-plain/", broken_plain),
    path("api/test/plain-database-read/", plain_database_read),
    path("api/test/users/", UserList.as_view()),
    path("", include("evoflow.urls")),
]

handler400 = "evoflow.api.errors.handler400"
handler403 = "evoflow.api.errors.handler403"
handler404 = "evoflow.api.errors.handler404"
handler500 = "evoflow.api.errors.handler500"
