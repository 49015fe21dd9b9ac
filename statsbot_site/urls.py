from django.contrib import admin
from django.urls import include, path

from notifications.client_download import client_zip
from statsbot_site.health import healthz

admin.site.site_header = "StatsBot operator console"
admin.site.site_title = "StatsBot"

urlpatterns = [
    path("admin/", admin.site.urls),
    path("healthz", healthz, name="healthz"),
    path("", include("workers.urls")),
    path("api/", include("notifications.urls")),
    path("client/experiment-bot.zip", client_zip, name="client-zip"),
    path("telegram/", include("telegram_app.urls")),
]
