"""The deliveries API: routes under /api/v1/."""

from django.urls import path

from deliveries import api

urlpatterns = [
    path("events/", api.EventListCreateApi.as_view(), name="deliveries-events"),
    path("events/<int:event_id>/", api.EventDetailApi.as_view(), name="deliveries-event"),
    path(
        "events/<int:event_id>/guests/",
        api.EventGuestsApi.as_view(),
        name="deliveries-event-guests",
    ),
    path(
        "events/<int:event_id>/messages/",
        api.EventMessagesApi.as_view(),
        name="deliveries-event-messages",
    ),
    path("guests/<int:guest_id>/", api.GuestDetailApi.as_view(), name="deliveries-guest"),
    path("me/messages/", api.MyMessagesApi.as_view(), name="deliveries-my-messages"),
]
