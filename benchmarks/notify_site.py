"""Settings for ``benchmarks/notify_api.py``: the real site plus a bare view served by the same
process as the baseline (``DJANGO_SETTINGS_MODULE=benchmarks.notify_site``). Not shipped: the
Procfile and ``runbot`` serve ``statsbot_site`` only."""

from statsbot_site.settings import *  # noqa: F403 — the real settings, with one more URL

ROOT_URLCONF = "benchmarks.notify_urls"
