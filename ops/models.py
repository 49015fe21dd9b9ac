"""The one fact about connects that no other row keeps: when a token's worker was first ready.

``ConnectToken`` stores when a token was issued and used; ``Worker.connected_at`` is overwritten
at every reconnect. An ``Enrollment`` ties a used token to the worker it created and keeps the
time of that worker's first authenticated connection ("ready"). Nothing else is stored: the
rest of the metrics are read from jobs, workers, tokens, outbox rows and tracked processes.
"""

from __future__ import annotations

from django.db import models


class Enrollment(models.Model):
    worker = models.OneToOneField("workers.Worker", on_delete=models.CASCADE, related_name="enrollment")
    token = models.OneToOneField(
        "workers.ConnectToken", null=True, blank=True, on_delete=models.SET_NULL, related_name="enrollment"
    )
    # Copied from the token so the figures survive the token row being cleaned up.
    token_issued_at = models.DateTimeField(null=True, blank=True)
    token_used_at = models.DateTimeField(null=True, blank=True)
    first_ready_at = models.DateTimeField()

    class Meta:
        ordering = ["-first_ready_at"]
        indexes = [models.Index(fields=["token_issued_at"])]

    def __str__(self) -> str:
        return f"worker {self.worker_id} ready at {self.first_ready_at:%Y-%m-%d %H:%M:%S}"

    @property
    def seconds_to_ready(self) -> float | None:
        if self.token_issued_at is None:
            return None
        return (self.first_ready_at - self.token_issued_at).total_seconds()
