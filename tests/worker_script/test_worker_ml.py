"""describe / train / predict / list / delete on real files (CSV, Parquet, Excel)."""

from __future__ import annotations

import json
import threading

import numpy as np
import pandas as pd
import pytest


def _write(frame, folder, name):
    path = folder / name
    if name.endswith(".csv"):
        frame.to_csv(path, index=False)
    elif name.endswith(".parquet"):
        frame.to_parquet(path, index=False)
    else:
        frame.to_excel(path, index=False)
    return path


def _ok(result):
    assert result["success"], result
    assert json.dumps(result, allow_nan=False)
    return result["data"]


# ----------------------------------------------------------------- column logic


@pytest.mark.parametrize(
    ("values", "task"),
    [
        (["a", "b", "a"], "classification"),
        ([True, False, True], "classification"),
        ([0, 1, 2, 1, 0], "classification"),
        ([0.0, 1.0, np.nan, 1.0], "classification"),
        (list(range(100)), "regression"),
        ([0.5, 1.5, 2.5], "regression"),
    ],
)
def test_it_detects_the_task_from_the_target(sw, values, task):
    assert sw.detect_task(pd.Series(values)) == task


def test_it_suggests_no_task_for_identifiers_and_constants(sw):
    assert sw.suggest_task(pd.Series([f"id{i}" for i in range(500)])) is None
    assert sw.suggest_task(pd.Series([1, 1, 1])) is None
    assert sw.suggest_task(pd.Series([1.5, 2.5, 3.25])) == "regression"


def test_it_computes_regression_metrics(sw):
    m = sw.regression_metrics(np.array([1.0, 2.0, 3.0, 4.0]), np.array([1.0, 2.0, 3.0, 5.0]))
    assert m == {"r2": 0.8, "rmse": 0.5, "mae": 0.25}


def test_it_computes_binary_and_multiclass_metrics(sw):
    y = np.array([0, 0, 1, 1])
    proba = np.array([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.45, 0.55]])
    m = sw.classification_metrics(y, proba.argmax(axis=1), proba, 2)
    assert m == {"accuracy": 1.0, "f1": 1.0, "roc_auc": 1.0}
    assert sw.main_metric("classification", m) == {"name": "roc_auc", "value": 1.0}
    multi = sw.classification_metrics(np.array([0, 1, 2, 2]), np.array([0, 1, 2, 1]), None, 3)
    assert multi["accuracy"] == 0.75 and "roc_auc" not in multi
    assert sw.main_metric("classification", multi)["name"] == "accuracy"


def test_it_keeps_category_lists_and_maps_unseen_values_to_missing(sw):
    train = pd.DataFrame({"city": ["Paris", "Rome", None, "Paris"], "n": ["1", "2", "3", "4"]})
    schema, _ = sw.build_feature_schema(train, ["city"])
    assert schema == [{"name": "city", "kind": "categorical", "categories": ["Paris", "Rome"]}]
    later = pd.DataFrame({"city": pd.Series(["Rome", "Oslo", None], dtype=object)})
    prepared = sw.prepare_features(later, schema)
    assert list(prepared["city"].cat.categories) == ["Paris", "Rome"]
    assert prepared["city"].tolist()[0] == "Rome"
    assert prepared["city"].isna().tolist() == [False, True, True]


def test_it_coerces_numeric_features_whatever_the_reader_produced(sw):
    schema = [{"name": "x", "kind": "numeric"}]
    prepared = sw.prepare_features(pd.DataFrame({"x": ["1.5", "oops", None]}), schema)
    assert prepared["x"].dtype == "float64" and prepared["x"].isna().tolist() == [False, True, True]


def test_it_merges_running_statistics_chunk_by_chunk(sw):
    data = np.random.default_rng(1).normal(5, 2, 1001)
    stats = sw.RunningStats()
    for start in range(0, len(data), 97):
        stats.add(data[start : start + 97])
    assert stats.mean == pytest.approx(data.mean(), abs=1e-9)
    assert (stats.m2 / (stats.n - 1)) ** 0.5 == pytest.approx(data.std(ddof=1), abs=1e-9)
    assert (stats.min, stats.max) == (data.min(), data.max())
    s = stats.summary()  # as it leaves the machine: statistics quoted to 4 significant digits
    assert s == {"count": 1001, "mean": float(f"{data.mean():.4g}"), "std": float(f"{data.std(ddof=1):.4g}"),
                 "min": float(f"{data.min():.4g}"), "max": float(f"{data.max():.4g}")}


def test_it_never_sends_an_extreme_prediction_as_it_is(sw):
    # A model that learnt the file by heart predicts its values: the summary must not carry them.
    stats = sw.RunningStats()
    stats.add([1234.5678, 899184538.016421, 5000.25])
    s = stats.summary()
    assert (s["min"], s["max"]) == (1235.0, 899200000.0)
    assert not {s["min"], s["max"], s["mean"]} & {1234.5678, 899184538.016421, 5000.25}


def test_it_caps_the_result_size_by_cutting_lists(sw):
    big = {
        "type": "result",
        "job_id": "j",
        "success": True,
        "data": {"sample": [["x" * 100] * 10 for _ in range(2000)], "rows": 5},
    }
    capped = sw.cap_result_size(big, limit=64 * 1024)
    assert sw.json_size(capped) < 64 * 1024
    assert capped["data"]["truncated"] is True and capped["data"]["rows"] == 5
    assert 0 < len(capped["data"]["sample"]) < 2000
    huge = {"type": "result", "job_id": "j", "success": True, "data": {"text": "y" * 100_000}}
    assert sw.cap_result_size(huge, limit=1024)["error_code"] == "internal"


def test_it_makes_cell_values_json_safe(sw):
    row = [
        np.int64(3),
        np.float32(1.5),
        float("nan"),
        pd.NaT,
        pd.Timestamp("2024-01-02"),
        "z" * 100,
        None,
        pd.NA,
    ]
    assert [sw.json_safe(v) for v in row][:5] == [3, 1.5, None, None, "2024-01-02T00:00:00"]
    assert len(sw.json_safe("z" * 100)) == 60
    assert sw.json_safe(pd.NA) is None


# ----------------------------------------------------------------- describe


def test_it_describes_a_csv_with_counts_and_json_safe_samples(sw, run_job, data_root, breast_cancer_frame):
    path = _write(breast_cancer_frame, data_root, "bc.csv")
    data = _ok(run_job(sw.job_describe, {"file_path": str(path)})[0])
    assert data["rows"] == 569 and data["rows_exact"] is True and data["format"] == "csv"
    assert data["n_columns"] == 31 and len(data["sample"]) == 5
    target = next(c for c in data["columns"] if c["name"] == "target")
    assert target["suggested_task"] == "classification" and target["unique"] == 2


def test_it_counts_rows_of_a_big_csv_without_parsing_it_all(sw, run_job, data_root, monkeypatch):
    monkeypatch.setattr(sw, "DESCRIBE_SAMPLE_ROWS", 100)
    frame = pd.DataFrame({"a": range(1234), "b": ["x", "y"] * 617})
    path = _write(frame, data_root, "many.csv")
    data = _ok(run_job(sw.job_describe, {"file_path": str(path)})[0])
    assert data["rows"] == 1234 and data["rows_exact"] is True and data["sample_rows"] == 100
    assert sw.count_csv_rows(path) == (1234, True)


def test_it_marks_csv_counts_inexact_when_quotes_may_hide_newlines(sw, data_root):
    path = data_root / "q.csv"
    path.write_text('a,b\n1,"two\nlines"\n3,x')
    assert sw.count_csv_rows(path) == (3, False)


@pytest.mark.parametrize("name", ["bc.parquet", "bc.xlsx"])
def test_it_describes_parquet_and_excel(sw, run_job, data_root, breast_cancer_frame, name, monkeypatch):
    monkeypatch.setattr(sw, "DESCRIBE_SAMPLE_ROWS", 100)
    path = _write(breast_cancer_frame, data_root, name)
    data = _ok(run_job(sw.job_describe, {"file_path": str(path)})[0])
    assert data["rows"] == 569 and data["sample_rows"] == 100
    assert data["rows_exact"] is (name.endswith(".parquet"))


# ----------------------------------------------------------------- train + predict


@pytest.mark.parametrize(
    ("fmt", "model"),
    [
        ("csv", "lightgbm"),
        ("parquet", "random_forest"),
        ("xlsx", "linear"),
        ("csv", "linear"),
        ("parquet", "lightgbm"),
    ],
)
def test_it_trains_and_predicts_breast_cancer_classification(
    sw, run_job, settings, data_root, breast_cancer_frame, fmt, model
):
    frame = breast_cancer_frame.copy()
    frame["size_class"] = np.where(frame["mean radius"] > 14, "large", "small")
    path = _write(frame, data_root, f"bc.{fmt}")
    result, progress = run_job(
        sw.job_train, {"file_path": str(path), "target_column": "target", "model_type": model}
    )
    data = _ok(result)
    assert data["task_type"] == "classification" and data["classes"] == ["benign", "malignant"]
    assert data["metrics"]["accuracy"] > 0.9 and data["metrics"]["roc_auc"] > 0.95
    assert data["n_train"] + data["n_test"] == 569
    assert data["confusion_matrix"]["labels"] == ["benign", "malignant"]
    assert sum(map(sum, data["confusion_matrix"]["matrix"])) == data["n_test"]
    assert sum(i["importance"] for i in data["feature_importance"]) <= 1.000001
    assert len(data["feature_importance"]) == 20
    statuses = [p["status"] for p in progress]
    assert statuses[0] == "reading" and {"training", "evaluating", "saving", "done"} <= set(statuses)
    meta = json.loads((settings.models_dir / data["model_id"] / "metadata.json").read_text())
    assert meta["feature_schema"][-1] == {
        "name": "size_class",
        "kind": "categorical",
        "categories": ["large", "small"],
    }

    pred = _ok(
        run_job(sw.job_predict, {"file_path": str(path), "model_id": data["model_id"]}, chunk_rows=100)[0]
    )
    assert pred["rows"] == 569 and pred["columns"] == ["prediction", "proba_benign", "proba_malignant"]
    assert sum(pred["summary"]["counts"].values()) == 569
    out = pd.read_csv(pred["output_path"])
    assert len(out) == 569 and list(out.columns[-3:]) == pred["columns"]
    assert (out["prediction"] == frame["target"]).mean() > 0.9
    assert np.allclose(out["proba_benign"] + out["proba_malignant"], 1, atol=1e-5)
    assert len(pred["sample"]["rows"]) == 10


@pytest.mark.parametrize(
    ("fmt", "model"), [("csv", "random_forest"), ("parquet", "linear"), ("xlsx", "lightgbm")]
)
def test_it_trains_and_predicts_diabetes_regression(sw, run_job, data_root, diabetes_frame, fmt, model):
    path = _write(diabetes_frame, data_root, f"diabetes.{fmt}")
    data = _ok(
        run_job(sw.job_train, {"file_path": str(path), "target_column": "target", "model_type": model})[0]
    )
    assert data["task_type"] == "regression" and data["main_metric"]["name"] == "r2"
    assert data["metrics"]["r2"] > 0.25 and data["metrics"]["rmse"] > data["metrics"]["mae"] > 0
    bins = data["predicted_vs_actual"]  # [mean predicted, mean actual, rows]: never a single row's value
    assert data["n_test"] == 89 and sum(b[2] for b in bins) == 89 and len(bins) == 17
    assert all(b[2] >= 5 for b in bins) and [b[1] for b in bins] == sorted(b[1] for b in bins)
    assert data["model_id"].startswith(f"{model}_target_")
    pred = _ok(
        run_job(sw.job_predict, {"file_path": str(path), "model_id": data["model_id"]}, chunk_rows=50)[0]
    )
    assert pred["rows"] == 442 and pred["summary"]["count"] == 442
    out = pd.read_csv(pred["output_path"])
    assert pred["summary"]["mean"] == pytest.approx(out["prediction"].mean(), rel=1e-3)
    assert pred["summary"]["max"] == pytest.approx(out["prediction"].max(), rel=1e-3)


def test_it_predicts_in_chunks_with_unseen_categories_and_extra_columns(sw, run_job, data_root):
    rng = np.random.default_rng(0)
    n = 400
    train = pd.DataFrame({"colour": rng.choice(["red", "green", "blue"], n), "x": rng.normal(size=n)})
    train["y"] = train["x"] * 3 + train["colour"].map({"red": 10, "green": 0, "blue": -10})
    model_id = _ok(
        run_job(sw.job_train, {"file_path": str(_write(train, data_root, "t.csv")), "target_column": "y"})[0]
    )["model_id"]
    new = pd.DataFrame(
        {"id": range(1003), "colour": rng.choice(["red", "purple", None], 1003), "x": rng.normal(size=1003)}
    )
    path = _write(new, data_root, "new.csv")
    progress_rows = []
    result, progress = run_job(sw.job_predict, {"file_path": str(path), "model_id": model_id}, chunk_rows=100)
    data = _ok(result)
    progress_rows = [p["message"] for p in progress if p["status"] == "predicting"]
    assert data["rows"] == 1003 and data["summary"]["count"] == 1003
    assert data["output_path"] == str(data_root / "new_predictions.csv")
    out = pd.read_csv(data["output_path"])
    assert out["id"].tolist() == list(range(1003)) and out["prediction"].notna().all()
    assert progress_rows and progress_rows[0].startswith("Predicting")


def test_it_names_the_missing_columns_before_predicting(sw, run_job, data_root, diabetes_frame):
    path = _write(diabetes_frame, data_root, "d.csv")
    model_id = _ok(run_job(sw.job_train, {"file_path": str(path), "target_column": "target"})[0])["model_id"]
    partial = _write(diabetes_frame.drop(columns=["bmi", "s5"]), data_root, "partial.csv")
    result, _ = run_job(sw.job_predict, {"file_path": str(partial), "model_id": model_id})
    assert result["error_code"] == "missing_columns"
    assert "bmi" in result["error"] and "s5" in result["error"]
    assert not (data_root / "partial_predictions.csv").exists()


def test_it_writes_to_the_outputs_folder_when_the_input_folder_is_read_only(
    sw, settings, data_root, monkeypatch
):
    inp = data_root / "x.csv"
    real_access = sw.os.access
    monkeypatch.setattr(
        sw.os,
        "access",
        lambda p, mode: False if (mode == sw.os.W_OK and str(p) == str(data_root)) else real_access(p, mode),
    )
    out = sw.default_output_path(inp, settings.outputs_dir)
    assert out.parent == settings.outputs_dir and out.name.startswith("x_predictions_")


def test_it_cancels_a_prediction_between_chunks_and_leaves_no_partial_file(
    sw, settings, data_root, run_job, monkeypatch
):
    monkeypatch.setattr(sw, "PROGRESS_MIN_INTERVAL_S", 0)
    frame = pd.DataFrame({"x": np.arange(500.0), "y": np.arange(500.0) * 2})
    path = _write(frame, data_root, "c.csv")
    model_id = _ok(run_job(sw.job_train, {"file_path": str(path), "target_column": "y"})[0])["model_id"]
    cancel = threading.Event()

    def emit(msg):
        if msg["message"].startswith("Predicted"):
            cancel.set()

    ctx = sw.JobContext(
        "j", {"file_path": str(path), "model_id": model_id}, settings, emit=emit, cancel_event=cancel
    )
    result = sw.execute_job(lambda c: sw.job_predict(c, chunk_rows=50), ctx)
    assert result["error_code"] == "cancelled"
    assert sorted(p.name for p in data_root.iterdir()) == ["c.csv"]


def test_it_cancels_training_inside_the_lightgbm_fit(
    sw, settings, data_root, breast_cancer_frame, monkeypatch
):
    monkeypatch.setattr(sw, "PROGRESS_MIN_INTERVAL_S", 0)
    path = _write(breast_cancer_frame, data_root, "bc.csv")
    cancel = threading.Event()
    seen = []

    def emit(msg):
        seen.append(msg["status"])
        if msg["status"] == "training" and "trees" in msg["message"]:
            cancel.set()

    ctx = sw.JobContext(
        "j", {"file_path": str(path), "target_column": "target"}, settings, emit=emit, cancel_event=cancel
    )
    assert sw.execute_job(sw.job_train, ctx)["error_code"] == "cancelled"
    assert "evaluating" not in seen and not settings.models_dir.exists()


@pytest.mark.parametrize(
    ("params", "code", "words"),
    [
        ({"target_column": "nope"}, "bad_target", "Available columns: a, b, t"),
        ({"target_column": "empty"}, "bad_target", "no values"),
        ({"target_column": "const"}, "bad_target", "only one value"),
        ({"target_column": "t", "task_type": "regression"}, "bad_target", "not numeric"),
        ({"target_column": "t", "feature_columns": ["zzz"]}, "missing_columns", "zzz"),
        ({"target_column": "t", "model_type": "deep_net"}, "invalid_params", "deep_net"),
        ({"target_column": "t", "test_size": 0.9}, "invalid_params", "test_size"),
        ({}, "invalid_params", "target_column"),
    ],
)
def test_it_explains_bad_training_requests(sw, run_job, data_root, params, code, words):
    frame = pd.DataFrame(
        {
            "a": range(30),
            "b": [1.5] * 30,
            "t": ["x", "y", "z"] * 10,
            "empty": [None] * 30,
            "const": ["k"] * 30,
        }
    )
    path = _write(frame, data_root, "f.csv")
    result, _ = run_job(sw.job_train, {"file_path": str(path), **params})
    assert result["success"] is False and result["error_code"] == code
    assert words in result["error"]


def test_it_refuses_too_few_rows(sw, run_job, data_root):
    path = _write(pd.DataFrame({"a": range(5), "t": [1.0, 2, 3, 4, 5]}), data_root, "tiny.csv")
    result, _ = run_job(sw.job_train, {"file_path": str(path), "target_column": "t"})
    assert result["error_code"] == "not_enough_data"


def test_it_trains_without_stratifying_when_a_class_is_tiny(sw, run_job, data_root):
    frame = pd.DataFrame({"a": range(40), "t": ["x"] * 20 + ["y"] * 19 + ["rare"]})
    data = _ok(
        run_job(sw.job_train, {"file_path": str(_write(frame, data_root, "s.csv")), "target_column": "t"})[0]
    )
    assert any("not stratified" in w for w in data["warnings"])


def test_it_limits_random_forests_on_big_data_and_says_so(sw):
    params, warnings = sw.random_forest_settings(500_000)
    assert params["max_depth"] == 16 and params["max_samples"] == 0.3 and params["n_jobs"] == -1
    assert "500,000" in warnings[0]
    assert sw.random_forest_settings(1000) == ({"n_estimators": 100, "n_jobs": -1, "random_state": 42}, [])


def test_it_makes_readable_unique_model_ids(sw, tmp_path):
    import datetime as dt

    now = dt.datetime(2025, 11, 30, 12, 34, 56)
    assert sw.make_model_id("lightgbm", "price ($)/m²", tmp_path, now) == "lightgbm_price_m_20251130_123456"
    (tmp_path / "lightgbm_price_m_20251130_123456").mkdir()
    assert sw.make_model_id("lightgbm", "price ($)/m²", tmp_path, now).endswith("_2")
    assert sw.make_model_id("linear", "../..", tmp_path, now) == "linear_target_20251130_123456"


def test_it_lists_models_newest_first_and_skips_broken_ones(sw, run_job, settings, data_root, diabetes_frame):
    path = _write(diabetes_frame, data_root, "d.csv")
    first = _ok(
        run_job(sw.job_train, {"file_path": str(path), "target_column": "target", "model_type": "linear"})[0]
    )["model_id"]
    second = _ok(run_job(sw.job_train, {"file_path": str(path), "target_column": "target"})[0])["model_id"]
    meta = settings.models_dir / first / "metadata.json"
    meta.write_text(meta.read_text().replace('"created_at": "', '"created_at": "0'))  # older
    (settings.models_dir / "broken").mkdir()
    data = _ok(run_job(sw.job_list_models, {})[0])
    assert [m["model_id"] for m in data["models"]] == [second, first]
    assert data["models"][0]["main_metric"]["name"] == "r2" and data["models"][0]["n_features"] == 10
    assert data["warnings"] == ["Skipped broken: no readable metadata.json."]


def test_it_deletes_a_model_and_refuses_unknown_or_unsafe_ids(
    sw, run_job, settings, data_root, diabetes_frame
):
    path = _write(diabetes_frame, data_root, "d.csv")
    model_id = _ok(run_job(sw.job_train, {"file_path": str(path), "target_column": "target"})[0])["model_id"]
    assert _ok(run_job(sw.job_delete_model, {"model_id": model_id})[0]) == {
        "model_id": model_id,
        "deleted": True,
    }
    assert not (settings.models_dir / model_id).exists()
    assert run_job(sw.job_delete_model, {"model_id": model_id})[0]["error_code"] == "model_not_found"
    assert run_job(sw.job_delete_model, {"model_id": "../data"})[0]["error_code"] == "invalid_model_id"
    assert (
        run_job(sw.job_predict, {"model_id": "nope", "file_path": str(path)})[0]["error_code"]
        == "model_not_found"
    )


def test_it_turns_unexpected_exceptions_into_short_error_results(sw, settings):
    def boom(ctx):
        raise RuntimeError("disk on fire")

    result = sw.execute_job(boom, sw.JobContext("j", {}, settings))
    assert result == {
        "type": "result",
        "job_id": "j",
        "success": False,
        "error": "Unexpected error (RuntimeError): disk on fire",
        "error_code": "internal",
    }


def test_it_trains_and_predicts_with_xgboost_when_installed(sw, run_job, data_root, breast_cancer_frame):
    pytest.importorskip("xgboost")
    frame = breast_cancer_frame.copy()
    frame["size_class"] = np.where(frame["mean radius"] > 14, "large", "small")
    path = _write(frame, data_root, "bc.csv")
    data = _ok(
        run_job(sw.job_train, {"file_path": str(path), "target_column": "target", "model_type": "xgb"})[0]
    )
    assert data["model_type"] == "xgboost" and data["metrics"]["roc_auc"] > 0.95
    pred = _ok(run_job(sw.job_predict, {"file_path": str(path), "model_id": data["model_id"]})[0])
    assert sum(pred["summary"]["counts"].values()) == 569


def test_it_reads_true_false_text_as_numbers_for_bool_features(sw):
    values = pd.Series(["True", "false", None, "2.5", "n/a"], dtype=object)
    assert sw._to_float(values).tolist()[:2] == [1.0, 0.0]
    assert sw._to_float(values).isna().tolist() == [False, False, True, False, True]


def test_it_appends_csv_chunks_with_arrow_or_pandas_and_reads_back_the_same(sw, tmp_path):
    plain = pd.DataFrame({"s": ["Oslo", 'say "hi", ok', None], "x": [0.1, None, 3.0], "n": [1, 2, 3]})
    mixed = pd.DataFrame(
        {"s": pd.Series([1, "x", None], dtype=object), "x": [0.1, None, 3.0], "n": [1, 2, 3]}
    )
    for name, frame in (("plain", plain), ("mixed", mixed)):
        path = tmp_path / f"{name}.csv"
        with open(path, "wb") as fh:
            sink = sw.CsvSink(fh)
            sink.write(frame)
            sink.write(frame)
        back = pd.read_csv(path)
        assert sink.rows == 6 and list(back.columns) == ["s", "x", "n"]
        assert back["n"].tolist() == [1, 2, 3, 1, 2, 3] and back["x"].isna().sum() == 2
        assert back["s"].astype(str).tolist()[:2] == [str(v) for v in frame["s"][:2]]
