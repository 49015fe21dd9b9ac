"""The ``search`` of a progress frame (issue 14): known fields kept, checked, and bounded."""

from __future__ import annotations

import pytest

from workers.protocol import ProtocolError, parse_progress

JOB = "7b6f2a52-1f0e-4a51-9a57-1d1d1b1f0a00"


def test_it_keeps_the_search_fields_it_knows():
    frame = parse_progress({"type": "progress", "job_id": JOB, "progress": 30, "search": {
        "trial": 14, "best_score": 0.913, "metric": "r2", "best_model": "lightgbm", "seconds_left": 48.2,
        "extra": "x" * 10_000}})
    assert frame["search"] == {"trial": 14, "best_score": 0.913, "metric": "r2", "best_model": "lightgbm",
                               "seconds_left": 48.2}


def test_it_drops_bad_values_and_refuses_a_search_that_is_not_an_object():
    frame = parse_progress({"type": "progress", "job_id": JOB, "search": {
        "trial": True, "best_score": float("nan"), "metric": 5, "best_model": "m" * 500, "seconds_left": -3}})
    assert frame["search"] == {"best_model": "m" * 64, "seconds_left": 0.0}
    with pytest.raises(ProtocolError):
        parse_progress({"type": "progress", "job_id": JOB, "search": [1, 2]})
    assert "search" not in parse_progress({"type": "progress", "job_id": JOB})
