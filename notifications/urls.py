"""The notify API, included at ``/api/`` (see docs/notify-api.md)."""

from django.urls import path

from notifications.api import views

app_name = "notifications"

urlpatterns = [
    path("register", views.register, name="register"),
    path("register/<str:code>", views.register_poll, name="register-poll"),
    path("validate", views.validate, name="validate"),
    path("notify", views.notify, name="notify"),
    path("notify/batch", views.notify_batch, name="notify-batch"),
    path("processes/start", views.start_process, name="process-start"),
    path("heartbeat", views.heartbeat, name="heartbeat"),
    path("processes/finish", views.finish_process, name="process-finish"),
    path("openapi.json", views.openapi, name="openapi"),
]
