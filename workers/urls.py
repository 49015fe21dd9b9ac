from django.urls import path

from workers.views import worker_script

urlpatterns = [
    path("worker", worker_script, name="worker-script"),
]
