from django.urls import path

from workers.consumers import WorkerConsumer

websocket_urlpatterns = [
    path("ws/worker/", WorkerConsumer.as_asgi()),
]
