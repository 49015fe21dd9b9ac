"""The data budget, as a property: whatever the file holds, no result carries more of it than allowed.

Files of unique random strings and numbers go through every job type (describe, check, train for
classification and regression — linear, LightGBM and auto —, predict with both models and
explain, list_models, delete_model). Every
cell value of the file that shows up in a result is counted: inside ``sample`` at most 10 rows;
everywhere else only category labels (at most 50, each at most 200 characters) and not a single
number from the file (charts carry bins, metrics are statistics).
"""

from __future__ import annotations

import json

import pandas as pd
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

pytestmark = pytest.mark.timeout(600)

SAMPLE_ROWS, LABELS, LABEL_CHARS = 10, 50, 200  # the promise (README, docs/security.md)

# Text that a CSV file keeps as it is: no delimiters the worker sniffs, quotes or line breaks.
_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp"), blacklist_characters=',;|\t"'),
    min_size=1,
    max_size=120,
)
# Numbers that cannot be mistaken for a count, a size or a metric: large, with a fraction.
_number = st.floats(min_value=1000, max_value=1e9, allow_nan=False).filter(lambda x: x != int(x))


@st.composite
def files(draw):
    rows = draw(st.integers(min_value=60, max_value=200))
    n_classes = draw(st.integers(min_value=2, max_value=min(70, rows // 2)))
    texts = draw(st.lists(_text, min_size=rows, max_size=rows, unique=True))
    labels = draw(st.lists(_text, min_size=n_classes, max_size=n_classes, unique=True))
    return pd.DataFrame(
        {
            "text": ["t" + t for t in texts],
            "num": draw(st.lists(_number, min_size=rows, max_size=rows, unique=True)),
            "label": ["c" + labels[i % n_classes] for i in range(rows)],
            "amount": draw(st.lists(_number, min_size=rows, max_size=rows, unique=True)),
        }
    )


def _walk(obj, in_sample=False):
    """(value, inside a sample?) for every key and leaf of a result."""
    if isinstance(obj, dict):
        for key, value in obj.items():
            yield key, in_sample
            yield from _walk(value, in_sample or key == "sample")
    elif isinstance(obj, list):
        for value in obj:
            yield from _walk(value, in_sample)
    else:
        yield obj, in_sample


def _is_cell(value, strings, numbers):
    if isinstance(value, float) and not isinstance(value, bool):
        return value in numbers
    if isinstance(value, str):
        if value in strings:
            return True
        cut = value.endswith("\u2026") and value[:-1]
        return bool(cut) and any(s.startswith(cut) for s in strings)
    return False


def assert_within_budget(result, frame):
    assert result["success"], result
    data = result["data"]
    json.dumps(result, ensure_ascii=False, allow_nan=False).encode("utf-8")
    strings = {v for col in ("text", "label") for v in frame[col]}
    numbers = {v for col in ("num", "amount") for v in frame[col]}
    sample = data.get("sample")
    if isinstance(sample, dict):
        assert len(sample["rows"]) <= SAMPLE_ROWS
    elif sample is not None:
        assert len(sample) <= SAMPLE_ROWS
    outside = [v for v, in_sample in _walk(data) if not in_sample and _is_cell(v, strings, numbers)]
    assert not [v for v in outside if isinstance(v, float)], "a number from the file left the machine"
    labels = set(outside)
    assert labels <= {v for v in frame["label"]} | {v[:199] + "\u2026" for v in frame["label"]}
    assert len(labels) <= LABELS and all(len(v) <= LABEL_CHARS for v in labels)
    return data


@hypothesis_settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)
@given(
    frame=files(),
    test_size=st.sampled_from([0.2, 0.5]),
    regressor=st.sampled_from(["linear", "lightgbm", "auto"]),
)
def test_no_result_carries_more_of_the_file_than_the_budget(
    sw, settings, tmp_path_factory, frame, test_size, regressor
):
    folder = tmp_path_factory.mktemp("budget")
    settings.allowed_roots = [folder]
    settings.models_dir = folder / "models"
    path = folder / "data.csv"
    frame.to_csv(path, index=False)
    as_read = sw.read_table(path, "csv")  # the values exactly as the worker reads them
    assert as_read.dtypes["num"] == "float64" and len(as_read) == len(frame)

    def run(fn, params):
        return sw.execute_job(fn, sw.JobContext("j", params, settings))

    assert_within_budget(run(sw.job_describe, {"file_path": str(path)}), as_read)
    for target in ("label", "amount", "Amount", "text"):  # the check action, also refusing and suggesting
        assert_within_budget(run(sw.job_check, {"path": str(path), "target": target}), as_read)
    jobs = {
        "label": {"model_type": "linear", "task_type": "classification"},
        "amount": {"model_type": regressor, "task_type": "regression", "time_budget_s": 10},
    }
    for target, extra in jobs.items():
        params = {"file_path": str(path), "target_column": target, "test_size": test_size, **extra}
        trained = assert_within_budget(run(sw.job_train, params), as_read)
        explain = trained["model_type"] in ("lightgbm", "auto")  # why_ columns stay in the file
        predicted = run(
            sw.job_predict, {"file_path": str(path), "model_id": trained["model_id"], "explain": explain}
        )
        assert_within_budget(predicted, as_read)
        assert predicted["data"]["rows"] == len(frame)
    listed = assert_within_budget(run(sw.job_list_models, {}), as_read)
    assert len(listed["models"]) == 2 and all(m["refused"] is None for m in listed["models"])
    for model in listed["models"]:
        assert_within_budget(run(sw.job_delete_model, {"model_id": model["model_id"]}), as_read)
