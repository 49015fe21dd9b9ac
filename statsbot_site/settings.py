"""StatsBot settings.

Everything comes from the environment through django-environ (see README, "Configuration").
With nothing set, the project runs on embedded defaults: SQLite in the project folder and
the in-memory channel layer, DEBUG on, and the built-in Telegram sandbox instead of Telegram.
A malformed value stops the process at start with a message naming the variable.
"""

from __future__ import annotations

import os
from pathlib import Path

import environ

from statsbot_site.config import read_config

BASE_DIR = Path(__file__).resolve().parent.parent

# python-telegram-bot 22: durations such as RetryAfter.retry_after become timedeltas in its next
# major version; opt in now so the code is written for that and no deprecation warning fires.
os.environ.setdefault("PTB_TIMEDELTA", "1")

env = environ.Env()
CONFIG = read_config(env, BASE_DIR)

DEBUG = CONFIG.debug
SECRET_KEY = CONFIG.secret_key
ALLOWED_HOSTS = CONFIG.allowed_hosts
PUBLIC_URL = CONFIG.public_url
CSRF_TRUSTED_ORIGINS = CONFIG.csrf_trusted_origins

TELEGRAM_BOT_TOKEN = CONFIG.telegram_bot_token
TELEGRAM_API_URL = CONFIG.telegram_api_url
TELEGRAM_WEBHOOK_SECRET = CONFIG.telegram_webhook_secret
TELEGRAM_USE_SANDBOX = CONFIG.use_sandbox
# Used in t.me links (pairing). When it is not set, the bot process publishes the username it
# gets from getMe (and, with the sandbox, its web chat as where links open): see core.site.
TELEGRAM_BOT_USERNAME = CONFIG.telegram_bot_username

# Seconds: a worker that comes back within this grace sends no "disconnected" notice;
# a job whose worker stays away this long is marked lost; a tracked process is stalled
# when no heartbeat came for its interval plus this grace.
WORKER_DISCONNECT_GRACE = CONFIG.disconnect_grace
JOB_LOST_GRACE = CONFIG.lost_job_grace
HEARTBEAT_GRACE = CONFIG.heartbeat_grace
PROCESS_LOST_AFTER = CONFIG.process_lost_after  # seconds a stalled process waits before it is marked lost
# Seconds: a live /dashboard is edited at most this often (and only when its text changed), and
# stops being edited once nothing has run for DASHBOARD_IDLE_AFTER (telegram_app.dashboards).
DASHBOARD_REFRESH = 10.0
DASHBOARD_IDLE_AFTER = 3600.0
# Seconds an outbox sender's claim on a chat lives unless renewed (a live sender renews it every
# third of that): a sender that crashed holds its chats at most this long (core.claims).
OUTBOX_LEASE = CONFIG.outbox_lease
WORKER_STALE_AFTER = CONFIG.worker_stale_after
# Failure digests (notifications.digests): failed, killed, stalled or lost runs of one account within
# FAILURE_DIGEST_WINDOW seconds of the first form a group; the first alert is held FAILURE_DIGEST_HOLD
# seconds for company; from FAILURE_DIGEST_THRESHOLD runs on, one message lists them. Window 0: off.
FAILURE_DIGEST_WINDOW, FAILURE_DIGEST_HOLD, FAILURE_DIGEST_THRESHOLD = CONFIG.failure_digest

# How many reverse proxies (a PaaS router, nginx, a load balancer) stand in front of the web
# processes. The client's address for per-address limits is the entry that many places from the
# right of X-Forwarded-For (entries further left are whatever the client sent): core.client_address.
TRUSTED_PROXY_COUNT = CONFIG.trusted_proxy_count

# Seconds: /readyz fails when a deliverable outbox message has waited longer than this, or when
# deliverable messages have waited READY_SENDER_IDLE and no sender claimed anything for as long.
READY_OUTBOX_MAX_AGE = CONFIG.ready_outbox_max_age
READY_SENDER_IDLE = CONFIG.ready_sender_idle
# /metrics (Prometheus): a bearer token when set; when empty, only loopback requests no proxy forwarded.
METRICS_TOKEN = CONFIG.metrics_token

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "core",
    "accounts",
    "workers",
    "jobs",
    "notifications",
    "telegram_app",
    "ops",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Counts notify API responses by status, per process (for /metrics).
    "ops.middleware.ApiStatusMiddleware",
]

ROOT_URLCONF = "statsbot_site.urls"
ASGI_APPLICATION = "statsbot_site.asgi.application"
WSGI_APPLICATION = None

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES = {"default": CONFIG.database}
CHANNEL_LAYERS = {"default": CONFIG.channel_layer}

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
MEDIA_ROOT = CONFIG.media_root
# Uploads to the notify API (logs, plots) are capped; the view checks it too.
DATA_UPLOAD_MAX_MEMORY_SIZE = 12 * 1024 * 1024
FILE_UPLOAD_MAX_MEMORY_SIZE = 2 * 1024 * 1024

if not DEBUG:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=True)
    SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=60 * 60 * 24 * 30)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = True
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$", r"^metrics$"]

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": CONFIG.log_level},
    "loggers": {
        "httpx": {"level": "WARNING"},
        "httpcore": {"level": "WARNING"},
        "daphne": {"level": "WARNING"},
        "aiohttp.access": {"level": "WARNING"},
    },
}
