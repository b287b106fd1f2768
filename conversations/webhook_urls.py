"""Meta's Messenger webhook under /webhooks/."""

from django.urls import URLPattern

urlpatterns: list[URLPattern] = []
