from django.contrib import admin
from django.urls import include, path

from notifications.client_download import client_zip
from ops.views import metrics, metrics_page
from statsbot_site.health import healthz, readyz
from statsbot_site.home import doc, home

admin.site.site_header = "StatsBot operator console"
admin.site.site_title = "StatsBot"
admin.site.index_template = "ops/admin_index.html"  # the admin index links the metrics page

urlpatterns = [
    path("", home, name="home"),
    path("docs/<slug:name>", doc, name="doc"),
    path("admin/ops/metrics/", admin.site.admin_view(metrics_page), name="ops-metrics"),
    path("admin/", admin.site.urls),
    path("healthz", healthz, name="healthz"),
    path("readyz", readyz, name="readyz"),
    path("metrics", metrics, name="metrics"),
    path("", include("workers.urls")),
    path("api/", include("notifications.urls")),
    path("client/experiment-bot.zip", client_zip, name="client-zip"),
    path("telegram/", include("telegram_app.urls")),
]
