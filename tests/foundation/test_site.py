"""core.site: what a running process learned, read by every process instead of settings."""

from __future__ import annotations

import pytest

from core import site
from core.models import BotIdentity

pytestmark = pytest.mark.django_db


@pytest.fixture
def no_served_url():
    yield
    site.serve_at("")


def test_it_links_to_t_me_with_the_configured_or_published_username(settings):
    settings.TELEGRAM_BOT_USERNAME = ""
    assert site.start_link("pair_x") == "https://t.me/statsbot_sandbox_bot?start=pair_x"  # before any bot ran
    site.publish_bot(username="stats_bot")
    assert site.start_link("pair_x") == "https://t.me/stats_bot?start=pair_x"
    settings.TELEGRAM_BOT_USERNAME = "configured_bot"
    assert site.start_link("pair_x") == "https://t.me/configured_bot?start=pair_x"


def test_it_links_to_the_sandbox_web_chat_the_bot_published(settings):
    settings.TELEGRAM_BOT_USERNAME = ""
    site.publish_bot(username="statsbot_sandbox_bot", deep_link_base="http://127.0.0.1:8081/")
    assert site.start_link("pair_x") == "http://127.0.0.1:8081/?start=pair_x"
    site.publish_bot(username="real_bot")  # a later start against Telegram clears it
    assert site.start_link("pair_x") == "https://t.me/real_bot?start=pair_x"
    assert BotIdentity.objects.count() == 1


def test_it_points_at_where_runbot_serves_when_public_url_is_unset(settings, no_served_url):
    settings.PUBLIC_URL = "http://127.0.0.1:8000"
    assert site.public_url() == "http://127.0.0.1:8000"
    site.serve_at("http://0.0.0.0:9000/")
    assert site.public_url() == "http://0.0.0.0:9000"
