"""Charts draw any Unicode column name: a font fallback chain, and a visible "�" for what no
installed font has — never an empty box (matplotlib's "Glyph … missing" warning)."""

from __future__ import annotations

import warnings

import pytest
from matplotlib import font_manager
from matplotlib.ft2font import FT2Font

from accounts.models import Account
from core.models import OutboxMessage
from core.outbox import enqueue
from jobs.models import Job
from telegram_app import charts

NAMES = ["価格", "площадь", "🧪 score", "نسبة", "sqft"]


def _installed_coverage() -> set[int]:
    """What any installed face of the chain's families can draw, read here independently of charts.py."""
    points: set[int] = set()
    for entry in font_manager.fontManager.ttflist:
        if entry.name in charts.FONT_CHAIN:
            points.update(FT2Font(entry.fname).get_charmap())
    return points


def test_it_keeps_what_a_font_can_draw_and_replaces_the_rest_visibly():
    covered = _installed_coverage()
    for name in NAMES:
        shown = charts.drawable(name)
        assert len(shown) == len(name)
        for original, drawn in zip(name, shown, strict=True):
            assert drawn in (original, "\ufffd")  # kept, or replaced visibly (DejaVu Sans has U+FFFD)
            if drawn != original:
                assert ord(original) not in covered or original.isspace()
    assert charts.drawable("площадь") == "площадь"  # Cyrillic: DejaVu Sans has it
    if ord("価") not in covered:  # no CJK font installed here
        assert charts.drawable("価格") == "\ufffd\ufffd"
    assert "DejaVu Sans" in charts.font_families()


@pytest.mark.parametrize("draw", [
    lambda: charts.feature_importance([{"feature": n, "importance": 1.0 / (i + 1)} for i, n in enumerate(NAMES)],
                                      title="重要度 📊"),
    lambda: charts.confusion_matrix(["猫", "犬", "🐟"], [[3, 1, 0], [0, 4, 1], [1, 0, 5]]),
    lambda: charts.metrics_over_time([{"step": s, "values": {"損失": 1 / s, "точность": s / 10}} for s in (1, 2, 3)],
                                     title="実験 ✓"),
])
def test_it_draws_unicode_names_without_a_missing_glyph(draw):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        png = draw()
    assert png.startswith(b"\x89PNG")
    assert not [w for w in caught if "missing from font" in str(w.message)]


def test_it_sends_a_chart_of_cjk_and_emoji_columns_to_the_chat(running_bot, user):
    user.send("/start")
    user.wait_for_message("Welcome")
    account = running_bot.call(Account.objects.get, telegram_user_id=user.user_id)

    def finished_job() -> Job:
        job = Job.objects.create(account=account, action=Job.Action.TRAIN, params={"model_type": "lightgbm"},
                                 state=Job.State.RUNNING)
        job.succeed({"model_type": "lightgbm", "task_type": "regression", "metrics": {"r2": 0.5},
                     "feature_importance": [{"feature": n, "importance": 1.0 / (i + 1)} for i, n in enumerate(NAMES)]})
        enqueue(account, kind=OutboxMessage.Kind.JOB, payload={"job_id": str(job.id)}, edit_key=job.edit_key)
        return job

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        running_bot.call(finished_job)
        photo = user.wait_for_message(predicate=lambda m: bool(m.get("photo")), timeout=60)
    assert photo.get("caption") == "Feature importance"
    assert user.download(photo["photo"][-1]["file_id"]).startswith(b"\x89PNG")
    assert not [w for w in caught if "missing from font" in str(w.message)]
