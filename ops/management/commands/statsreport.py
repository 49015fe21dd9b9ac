"""``manage.py statsreport``: the PRD's success metrics, as the admin page shows them."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from ops.metrics import render_text, report


class Command(BaseCommand):
    help = "Print the success metrics (last 24 h and 7 days) against the PRD's targets, and top job error codes."

    def handle(self, *args: Any, **options: Any) -> None:
        self.stdout.write(render_text(report()))
