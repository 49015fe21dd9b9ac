"""``/``: a small page saying what this server is and where to go, instead of a 404.

The printed web app URL is the first thing a new user opens. The page names the chat to talk
to (the sandbox's web chat when ``runbot`` runs one, else the bot on Telegram), the operator
console, the worker script, the API schema and the docs, which ``/docs/<name>`` serves from
the repository's ``docs/`` folder (a fixed list: the name never becomes a path).
"""

from __future__ import annotations

from pathlib import Path

from django.conf import settings
from django.http import FileResponse, Http404, HttpRequest, HttpResponse
from django.utils.html import format_html, format_html_join
from django.utils.safestring import mark_safe
from django.views.decorators.http import require_safe

from core.site import bot_identity, public_url

DOCS_DIR = Path(settings.BASE_DIR) / "docs"
DOCS = {
    "quickstart": ("quickstart.md", "Quick start: run it, connect a worker, pair a client"),
    "local-worker": ("local-worker.md", "The local worker: install, restart, autostart, training and prediction"),
    "notifications": ("notifications.md", "Experiment notifications with the experiment_bot client"),
    "deploy": ("deploy.md", "Deployment and operations"),
    "worker-protocol": ("worker-protocol.md", "The worker protocol (WebSocket messages, jobs, results)"),
    "notify-api": ("notify-api.md", "The notification API the experiment_bot client uses"),
    "security": ("security.md", "The threat model: what the server can and cannot make a worker do"),
    "architecture": ("architecture.md", "How the server, the bot, the worker and the client fit together"),
}

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<title>StatsBot server</title>
<style>body{{font:16px/1.5 system-ui,sans-serif;max-width:42rem;margin:2rem auto;padding:0 1rem;color:#222}}
code{{background:#f2f2f2;padding:0 .25em;border-radius:3px}}li{{margin:.3em 0}}</style></head>
<body>
<h1>StatsBot server</h1>
<p>This server runs <b>StatsBot</b>: a Telegram bot that trains and predicts on files on your own machine
(through a local worker) and follows your experiments (through the <code>experiment_bot</code> client).
You use it from the chat, not from this page.</p>
<h2>Start here</h2>
<ul>{chat}</ul>
<h2>For this server</h2>
<ul>
<li><a href="/admin/">/admin/</a> — the operator console (staff accounts)</li>
<li><a href="/worker">/worker</a> — the worker script; the chat's /connect prints the command that runs it</li>
<li><a href="/api/openapi.json">/api/openapi.json</a> — the notification API schema</li>
<li><a href="/healthz">/healthz</a> — health check</li>
</ul>
<h2>Docs</h2>
<ul>{docs}</ul>
<p><small>Serving at {url}</small></p>
</body></html>"""


def _chat_items() -> str:
    identity = bot_identity()
    if identity.deep_link_base:
        return format_html(
            '<li>Open the <a href="{}">Telegram sandbox web chat</a> (the built-in stand-in for Telegram), '
            "pick a name and send <code>/start</code>.</li>",
            identity.deep_link_base,
        )
    if settings.TELEGRAM_USE_SANDBOX:
        return mark_safe("<li>The bot runs against the built-in Telegram sandbox, which has not started yet: "
                         "run <code>python manage.py runbot</code>, which prints its web chat's address.</li>")
    username = identity.username or settings.TELEGRAM_BOT_USERNAME
    return format_html('<li>Open <a href="https://t.me/{0}">@{0}</a> in Telegram and send <code>/start</code>.</li>',
                       username)


@require_safe
def home(request: HttpRequest) -> HttpResponse:
    docs = format_html_join("", '<li><a href="/docs/{}">{}</a> — {}</li>',
                            ((slug, name, about) for slug, (name, about) in DOCS.items()))
    page = PAGE.format(chat=_chat_items(), docs=docs, url=format_html("{}", public_url() or request.build_absolute_uri("/")))
    return HttpResponse(page)


@require_safe
def doc(request: HttpRequest, name: str) -> FileResponse:
    if name not in DOCS:
        raise Http404("No such document.")
    path = DOCS_DIR / DOCS[name][0]
    if not path.is_file():
        raise Http404("That document is not installed with this server.")
    return FileResponse(path.open("rb"), content_type="text/markdown; charset=utf-8")
