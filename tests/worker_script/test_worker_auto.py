"""Issue 14, the worker side: the `check` action, the auto search (progress, stop_early, honest
evaluation, refit on all rows) and `explain` in predict (docs/worker-protocol.md)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading

import numpy as np
import pandas as pd
import pytest

pytestmark = pytest.mark.timeout(300)


def _check(sw, run_job, path, target):
    result, _ = run_job(sw.job_check, {"path": str(path), "target": target})
    assert result["success"], result
    return result["data"]


def _frame(n=300, seed=0):
    rng = np.random.default_rng(seed)
    x1, x2 = rng.normal(size=n), rng.normal(size=n)
    return pd.DataFrame(
        {
            "rownames": np.arange(1, n + 1),
            "x1": x1,
            "x2": x2,
            "colour": rng.choice(["red", "green", "blue"], size=n),
            "price": 3 * x1 - 2 * x2 + rng.normal(scale=0.5, size=n),
            "label": np.where(x1 + rng.normal(scale=0.7, size=n) > 0, "yes", "no"),
        }
    )


def test_it_checks_a_good_target_and_names_id_like_columns(sw, run_job, data_root):
    path = data_root / "good.csv"
    frame = _frame()
    frame["customer_key"] = [f"C{i:05d}" for i in range(len(frame))]
    frame.to_csv(path, index=False)
    data = _check(sw, run_job, path, "price")
    assert data["rows"] == 300 and data["refused"] is None and data["target"] == "price"
    assert data["tasks"] == ["regression"]
    assert set(data["id_like"]) == {"rownames", "customer_key"}
    assert data["leaks"] == [] and data["imbalance"] is None and data["suggestions"] == []
    text = _check(sw, run_job, path, "label")
    assert text["tasks"] == ["classification"]  # never regression for a non-numeric target


def test_it_flags_a_leak_and_strong_imbalance_with_its_metric(sw, run_job, data_root):
    rng = np.random.default_rng(1)
    n = 1000
    y = (rng.random(n) < 0.04).astype(int)
    frame = pd.DataFrame({"a": rng.normal(size=n), "b": rng.normal(size=n), "fraud": y})
    frame["fraud_score_after_review"] = y * 10 + rng.random(n)  # computed from the target
    path = data_root / "fraud.csv"
    frame.to_csv(path, index=False)
    data = _check(sw, run_job, path, "fraud")
    assert data["tasks"][0] == "classification"
    assert data["leaks"] == ["fraud_score_after_review"]
    assert data["imbalance"] == {"minority_share": pytest.approx(y.mean(), abs=1e-4), "metric": "ROC AUC"}


@pytest.mark.parametrize(
    ("frame", "target", "code"),
    [
        (pd.DataFrame({"only": [1, 2, 3]}), "only", "single_column"),
        (pd.DataFrame({"a": [], "b": []}), "b", "empty_file"),
        (pd.DataFrame({"a": range(30), "b": [7] * 30}), "b", "constant_target"),
        (pd.DataFrame({"a": range(30), "b": [None] * 30}), "b", "no_target_values"),
        (pd.DataFrame({"a": range(30), "b": [f"k{i}x" for i in range(30)]}), "b", "id_target"),
        (pd.DataFrame({"a": range(300), "b": [f"v{i % 250}" for i in range(300)]}), "b", "too_many_classes"),
    ],
)
def test_it_refuses_targets_no_model_can_learn(sw, run_job, data_root, frame, target, code):
    path = data_root / "bad.csv"
    frame.to_csv(path, index=False)
    data = _check(sw, run_job, path, target)
    assert data["refused"]["code"] == code and data["refused"]["message"]
    assert data["tasks"] == []


def test_it_suggests_close_column_names_for_a_missing_target(sw, run_job, data_root):
    path = data_root / "names.csv"
    _frame().to_csv(path, index=False)
    data = _check(sw, run_job, path, "Prise")
    assert data["refused"]["code"] == "no_such_column"
    assert data["suggestions"][0] == "price" and "price" in data["refused"]["message"]
    assert _check(sw, run_job, path, "LABEL")["suggestions"] == ["label"]


def _search_frames(progress):
    return [p["search"] for p in progress if "search" in p]


def test_it_searches_small_files_with_cross_validation_and_refits_on_all_rows(
    sw, run_job, data_root, breast_cancer_frame
):
    path = data_root / "bc.csv"
    frame = breast_cancer_frame.copy()
    frame.insert(0, "rownames", range(1, len(frame) + 1))
    frame.to_csv(path, index=False)
    params = {"file_path": str(path), "target_column": "target", "model_type": "auto", "time_budget_s": 10}
    result, progress = run_job(sw.job_train, params)
    assert result["success"], result
    data = result["data"]
    assert data["model_type"] == "auto" and data["refit_on_all_rows"] is True and data["sampled"] is None
    assert data["evaluation"]["method"] == "cv" and data["evaluation"]["rows"] == len(frame)
    assert data["evaluation"]["metric"] == "ROC AUC" and data["evaluation"]["score"] > 0.95
    assert data["main_metric"] == {"name": "roc_auc", "value": data["evaluation"]["score"]}
    assert data["comparison"]["baseline_name"] == "majority class" and data["comparison"]["baseline"] == 0.5
    assert data["comparison"]["default_lightgbm"] > 0.95
    search = data["search"]
    assert search["trials"] >= 1 and "LightGBM" in search["families"] and search["stopped_early"] is False
    assert search["time_budget_s"] == 10
    assert data["dropped_id_like"] == ["rownames"] and "rownames" not in data["features"]
    frames = _search_frames(progress)
    assert frames and frames[0]["trial"] == 1 and frames[0]["metric"] == "ROC AUC"
    assert {"best_score", "best_model", "seconds_left"} <= set(frames[-1])
    meta = json.loads((sw.Path(data["model_dir"]) / "metadata.json").read_text())
    assert meta["n_train"] == len(frame)  # refit on every row
    predicted, _ = run_job(sw.job_predict, {"file_path": str(path), "model_id": data["model_id"]})
    assert predicted["success"], predicted
    out = pd.read_csv(predicted["data"]["output_path"])
    accuracy = (out["prediction"] == frame["target"]).mean()
    assert accuracy > 0.97  # in-sample, after the refit on all rows


def test_it_keeps_id_like_columns_the_user_chose(sw, run_job, data_root, diabetes_frame):
    path = data_root / "diab.csv"
    frame = diabetes_frame.copy()
    frame.insert(0, "rownames", range(1, len(frame) + 1))
    frame.to_csv(path, index=False)
    params = {"file_path": str(path), "target_column": "target", "model_type": "lightgbm", "keep_columns": ["rownames"]}
    result, _ = run_job(sw.job_train, params)
    assert "rownames" in result["data"]["features"] and "dropped_id_like" not in result["data"]


def _big_regression(path, n=3000):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(n, 4))
    frame = pd.DataFrame(x, columns=["a", "b", "c", "d"])
    frame["city"] = rng.choice(["x", "y", "z", "w"], size=n)
    frame["y"] = x[:, 0] * 2 + np.sin(x[:, 1] * 2) + (frame["city"] == "x") * 1.5 + rng.normal(scale=0.3, size=n)
    frame.to_csv(path, index=False)
    return frame


def test_it_holds_out_rows_on_bigger_files_and_compares_with_default_lightgbm(sw, run_job, data_root):
    path = data_root / "big.csv"
    _big_regression(path)
    params = {
        "file_path": str(path),
        "target_column": "y",
        "model_type": "auto",
        "time_budget_s": 10,
        "test_size": 0.25,
    }
    result, progress = run_job(sw.job_train, params)
    assert result["success"], result
    data = result["data"]
    assert data["evaluation"] == {
        "method": "holdout",
        "rows": 750,
        "metric": "R\u00b2",
        "score": data["metrics"]["r2"],
        "higher_is_better": True,
    }
    assert data["n_test"] == 750 and data["n_train"] == 2250
    assert data["comparison"]["baseline_name"] == "mean" and data["comparison"]["baseline"] < 0.01
    assert data["evaluation"]["score"] >= data["comparison"]["default_lightgbm"] - 0.02
    assert len(data["predicted_vs_actual"]) == 20
    assert _search_frames(progress)[-1]["metric"] == "R\u00b2"


def test_it_stops_early_with_the_best_model_so_far(sw, settings, data_root):
    path = data_root / "big.csv"
    _big_regression(path)
    progress = []
    stop = threading.Event()

    def emit(frame):
        progress.append(frame)
        if "search" in frame and frame["search"]["trial"] >= 2:
            stop.set()  # what the client does on a stop_early frame

    params = {"file_path": str(path), "target_column": "y", "model_type": "auto", "time_budget_s": 600}
    ctx = sw.JobContext("job-stop", params, settings, emit=emit, stop_event=stop)
    result = sw.execute_job(sw.job_train, ctx)
    assert result["success"], result
    search = result["data"]["search"]
    assert search["stopped_early"] is True and search["trials"] <= 3 and search["seconds"] < 120
    assert result["data"]["evaluation"]["score"] > 0.8


def test_it_cancels_an_auto_search_and_saves_nothing(sw, settings, data_root):
    path = data_root / "big.csv"
    _big_regression(path)
    cancel = threading.Event()

    def emit(frame):
        if "search" in frame:
            cancel.set()

    params = {"file_path": str(path), "target_column": "y", "model_type": "auto", "time_budget_s": 600}
    ctx = sw.JobContext("job-cancel", params, settings, emit=emit, cancel_event=cancel)
    result = sw.execute_job(sw.job_train, ctx)
    assert result["error_code"] == "cancelled"
    assert not settings.models_dir.exists() or not any(settings.models_dir.iterdir())


@pytest.mark.parametrize("bad", [5, 100000, "fast", True])
def test_it_refuses_a_bad_time_budget(sw, run_job, data_root, bad):
    path = data_root / "d.csv"
    _frame().to_csv(path, index=False)
    params = {"file_path": str(path), "target_column": "price", "model_type": "auto", "time_budget_s": bad}
    result, _ = run_job(sw.job_train, params)
    assert result["error_code"] == "invalid_params" and "time_budget_s" in result["error"]


@pytest.mark.parametrize("model_type", ["lightgbm", "auto"])
def test_it_explains_each_prediction_with_its_top_contributions(sw, run_job, data_root, model_type):
    path = data_root / "explain.csv"
    frame = _frame(400).drop(columns=["label", "rownames"])
    frame.to_csv(path, index=False)
    trained, _ = run_job(
        sw.job_train,
        {"file_path": str(path), "target_column": "price", "model_type": model_type, "time_budget_s": 10},
    )
    assert trained["success"], trained
    result, _ = run_job(
        sw.job_predict, {"file_path": str(path), "model_id": trained["data"]["model_id"], "explain": True}
    )
    assert result["success"], result
    assert result["data"]["why_columns"] == ["why_1", "why_2", "why_3"]
    assert "why_1" not in result["data"]["columns"]
    out = pd.read_csv(result["data"]["output_path"])
    assert result["data"]["n_columns"] == len(out.columns)
    first = out["why_1"].str.split(":").str[0]
    assert first.isin(["x1", "x2"]).mean() > 0.9  # price = 3 x1 - 2 x2 + noise
    values = out[["why_1", "why_2", "why_3"]].apply(lambda c: c.str.split(": ").str[1].astype(float).abs())
    assert (values["why_1"] >= values["why_2"]).all() and (values["why_2"] >= values["why_3"]).all()
    if model_type == "lightgbm":  # contributions add up to the prediction (with the bias)
        meta, model = sw.load_model(sw.Path(trained["data"]["model_dir"]).parent, trained["data"]["model_id"])
        X = sw.prepare_features(frame, meta["feature_schema"])
        contrib = model.predict(X, pred_contrib=True)
        assert np.allclose(contrib.sum(axis=1), out["prediction"], atol=1e-4)


def test_it_writes_no_why_columns_for_models_without_contributions(sw, run_job, data_root):
    path = data_root / "lin.csv"
    _frame().drop(columns=["label"]).to_csv(path, index=False)
    trained, _ = run_job(sw.job_train, {"file_path": str(path), "target_column": "price", "model_type": "linear"})
    result, _ = run_job(
        sw.job_predict, {"file_path": str(path), "model_id": trained["data"]["model_id"], "explain": True}
    )
    assert result["success"] and "why_columns" not in result["data"]
    assert "contribution" in result["data"]["warnings"][0]
    assert "why_1" not in pd.read_csv(result["data"]["output_path"]).columns


@pytest.mark.e2e
async def test_the_real_worker_streams_the_search_and_stops_early_on_request(fake_server, tmp_path, script_path):
    data = tmp_path / "data"
    data.mkdir()
    _big_regression(data / "big.csv")
    env = dict(os.environ, STATSBOT_HOME=str(tmp_path / "home"), PYTHONUNBUFFERED="1")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(script_path),
        "--server",
        fake_server.url,
        "--token",
        "good-token",
        "--allow-dir",
        str(data),
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        ws = await fake_server.connection(within=60)
        params = {"file_path": str(data / "big.csv"), "target_column": "y", "model_type": "auto", "time_budget_s": 600}
        await ws.send(json.dumps({"type": "job", "job_id": "s1", "action": "train", "params": params}))
        while True:
            frame = await fake_server.next("progress", "s1", within=120)
            if "search" in frame and frame["search"]["trial"] >= 2:
                break
        assert frame["search"]["metric"] == "R\u00b2" and frame["search"]["best_model"]
        await ws.send(json.dumps({"type": "stop_early", "job_id": "s1"}))
        result = await fake_server.next("result", "s1", within=120)
        assert result["success"], result
        assert result["data"]["search"]["stopped_early"] is True
        assert result["data"]["evaluation"]["method"] == "holdout"
        checked = {"type": "job", "job_id": "c1", "action": "check", "params": {"path": str(data / "big.csv"), "target": "Y"}}
        await ws.send(json.dumps(checked))
        check = await fake_server.next("result", "c1", within=60)
        assert check["data"]["refused"]["code"] == "no_such_column" and check["data"]["suggestions"] == ["y"]
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 30)


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_it_samples_a_file_bigger_than_its_memory_budget_keeping_every_class(
    sw, run_job, data_root, monkeypatch, fmt
):
    rng = np.random.default_rng(5)
    n = 12_000
    x = rng.normal(size=n)
    label = np.where(x > 0, "up", "down").astype(object)
    label[:150] = "rare"  # 1.25 % of rows: kept whole
    frame = pd.DataFrame({"x": x, "noise": rng.normal(size=n), "label": label})
    path = data_root / f"big.{fmt}"
    frame.to_csv(path, index=False) if fmt == "csv" else frame.to_parquet(path)
    monkeypatch.setattr(sw, "TRAIN_MEMORY_BYTES", 60_000)  # ~1,500 rows' worth
    result, _ = run_job(
        sw.job_train, {"file_path": str(path), "target_column": "label", "model_type": "lightgbm"}
    )
    assert result["success"], result
    data = result["data"]
    assert data["sampled"]["rows_total"] == n and 1000 < data["sampled"]["rows_used"] < 6000
    assert data["n_rows"] == data["sampled"]["rows_used"]
    assert "random sample" in " ".join(data["warnings"])
    assert "rare" in data["classes"]
    assert data["confusion_matrix"]["matrix"][data["classes"].index("rare")] != [0, 0, 0]
