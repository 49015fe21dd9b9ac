from django.urls import path

from telegram_app.views import webhook

urlpatterns = [
    path("webhook/", webhook, name="telegram-webhook"),
]
