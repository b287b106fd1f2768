"""The journeys API: routes under /api/v1/."""

from django.urls import URLPattern, path

from journeys import api

urlpatterns: list[URLPattern] = [
    path("journeys/", api.JourneyListCreateApi.as_view(), name="journey-list"),
    path("journeys/<int:journey_id>/", api.JourneyDetailApi.as_view(), name="journey-detail"),
    path("journeys/<int:journey_id>/start/", api.JourneyStartApi.as_view(), name="journey-start"),
    path("contact-events/", api.ContactEventApi.as_view(), name="contact-event"),
    path("journey-sessions/", api.SessionListApi.as_view(), name="journey-session-list"),
    path(
        "journey-sessions/<int:session_id>/",
        api.SessionDetailApi.as_view(),
        name="journey-session-detail",
    ),
    path(
        "journey-sessions/<int:session_id>/pause/",
        api.SessionPauseApi.as_view(),
        name="journey-session-pause",
    ),
    path(
        "journey-sessions/<int:session_id>/resume/",
        api.SessionResumeApi.as_view(),
        name="journey-session-resume",
    ),
    path(
        "journey-sessions/<int:session_id>/cancel/",
        api.SessionCancelApi.as_view(),
        name="journey-session-cancel",
    ),
]
