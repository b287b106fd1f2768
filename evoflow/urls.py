from django.contrib import admin
from django.urls import include, path
from django.views.generic import RedirectView
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerView

from evoflow import views

urlpatterns = [
    # People who open the site land in the admin, where operators work.
    path("", RedirectView.as_view(url="/admin/", permanent=False), name="home"),
    path("admin/", admin.site.urls),
    path("healthz", views.healthz, name="healthz"),
    path("metrics", views.metrics_view, name="metrics"),
    path("api/", views.api_root, name="api-root"),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="swagger-ui"),
    path("api/redoc/", SpectacularRedocView.as_view(url_name="schema"), name="redoc"),
    # Each app owns its routes; the API's are under /api/v1/, Meta's webhook under /webhooks/.
    path("api/v1/", include("journeys.urls")),
    path("api/v1/", include("conversations.urls")),
    path("api/v1/", include("deliveries.urls")),
    path("api/v1/", include("evoflow.api.integrity")),
    path("webhooks/", include("conversations.webhook_urls")),
]

handler400 = "evoflow.api.errors.handler400"
handler403 = "evoflow.api.errors.handler403"
handler404 = "evoflow.api.errors.handler404"
handler500 = "evoflow.api.errors.handler500"
