"""A worker that speaks the real protocol over a real WebSocket, with answers a test chooses.

The bot's conversations are tested against it step by step; the real worker script is
exercised end to end in ``tests/stories``.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable
from typing import Any

import websockets

from workers.script import latest_version

Answer = Callable[[dict[str, Any]], dict[str, Any]]

MACHINE = {"machine_id": "scripted", "hostname": "scripted-box", "platform": "Linux", "os_release": "6.1",
           "python": "3.11.7", "worker_version": latest_version(), "packages": {"pandas": "3.0", "lightgbm": "4.7"},
           "models": ["auto", "lightgbm", "random_forest", "linear"]}

COLUMNS = [
    {"name": "sqft", "dtype": "float64", "missing": 0, "unique": 700, "suggested_task": "regression"},
    {"name": "city", "dtype": "str", "missing": 2, "unique": 5, "suggested_task": "classification"},
    {"name": "price", "dtype": "float64", "missing": 0, "unique": 731, "suggested_task": "regression"},
]


def default_answer(job: dict[str, Any]) -> dict[str, Any]:
    """What a healthy worker answers for each action (shapes from docs/worker-protocol.md)."""
    params = job["params"]
    if job["action"] == "describe":
        if "missing" in params["file_path"]:
            return {"success": False, "error": f"No file at {params['file_path']}.", "error_code": "file_not_found"}
        return {"success": True, "data": {"file_path": "/home/ann/" + params["file_path"].lstrip("~/"),
                                          "format": "csv", "rows": 8000, "rows_exact": True,
                                          "columns": COLUMNS, "sample": []}}
    if job["action"] == "check":
        return {"success": True, "data": check_answer(params["target"])}
    if job["action"] == "train" and params["model_type"] == "auto":
        return {"success": True, "data": auto_answer(params)}
    if job["action"] == "train":
        return {"success": True, "data": {
            "model_id": f"{params['model_type']}_{params['target_column']}_20261123_070000",
            "model_type": params["model_type"], "task_type": params["task_type"], "target": params["target_column"],
            "features": ["sqft", "city"], "n_rows": 8000, "n_train": 6400, "n_test": 1600,
            "metrics": {"r2": 0.91, "rmse": 12.5, "mae": 9.1}, "main_metric": {"name": "r2", "value": 0.91},
            "feature_importance": [{"feature": "sqft", "importance": 0.8}, {"feature": "city", "importance": 0.2}],
            "predicted_vs_actual": [[1.0, 1.1], [2.0, 1.9], [3.0, 3.2]], "duration_s": 1.5, "warnings": [],
            "model_dir": "/home/ann/.statsbot/models/x"}}
    if job["action"] == "list_models":
        return {"success": True, "data": {"models": [
            {"model_id": "lightgbm_price_20261123_070000", "model_type": "lightgbm", "task_type": "regression",
             "target": "price", "created_at": "2026-11-23T07:00:00", "n_features": 2,
             "main_metric": {"name": "r2", "value": 0.91}, "metrics": {"r2": 0.91}, "refused": None,
             "name": None, "source_file": "sales.csv", "size_bytes": 1_258_291}]}}
    if job["action"] == "predict":
        return {"success": True, "data": {
            "model_id": params["model_id"], "rows": 3, "output_path": "/home/ann/new_predictions.csv",
            "columns": ["prediction"], "sample": {"columns": ["sqft", "city", "prediction"],
                                                  "rows": [[50.0, "Oslo", 101.5], [80.0, "Rome", 160.2]]},
            "summary": {"mean": 130.85, "std": 41.5, "min": 101.5, "max": 160.2}, "duration_s": 0.4}}
    if job["action"] == "delete_model":
        return {"success": True, "data": {"model_id": params["model_id"], "deleted": True}}
    if job["action"] == "rename_model":
        return {"success": True, "data": {"model_id": params["model_id"], "name": params["name"]}}
    if job["action"] == "autostart":
        return {"success": True, "data": {"enabled": params["enable"], "method": "systemd",
                                          "path": "/home/ann/.config/systemd/user/statsbot-worker.service",
                                          "message": "Installed.", "manual_steps": []}}
    return {"success": False, "error": "unsupported", "error_code": "unsupported"}


def check_answer(target: str) -> dict[str, Any]:
    """A ``check`` of COLUMNS: numbers may be either task, text only classification; others refused."""
    names = [c["name"] for c in COLUMNS]
    answer: dict[str, Any] = {"rows": 8000, "target": target, "tasks": ["regression", "classification"],
                              "refused": None, "id_like": [], "leaks": [], "imbalance": None, "suggestions": []}
    if target not in names:
        close = [n for n in names if n[:3].casefold() == target[:3].casefold()]
        return {**answer, "tasks": [], "refused": {"code": "no_such_column",
                                                   "message": f"No column is named {target}."}, "suggestions": close}
    if target == "city":
        answer["tasks"] = ["classification"]
    return answer


SEARCH = {"trial": 14, "best_score": 0.913, "metric": "R²", "best_model": "LightGBM", "seconds_left": 48}


def auto_answer(params: dict[str, Any], *, stopped_early: bool = False) -> dict[str, Any]:
    """A ⭐ Auto training result (docs/worker-protocol.md, issue 14)."""
    return {
        "model_id": f"auto_{params['target_column']}_20261123_070000", "model_type": "auto",
        "task_type": params["task_type"], "target": params["target_column"], "features": ["sqft", "city"],
        "n_rows": 8000, "n_train": 6400, "n_test": 1600,
        "metrics": {"r2": 0.913, "rmse": 11.0, "mae": 8.2}, "main_metric": {"name": "r2", "value": 0.913},
        "evaluation": {"method": "holdout", "rows": 1600, "metric": "R²", "score": 0.913, "higher_is_better": True},
        "comparison": {"default_lightgbm": 0.871, "baseline": 0.0, "baseline_name": "mean"},
        "search": {"trials": 14 if stopped_early else 37, "families": ["LightGBM", "XGBoost"],
                   "chosen": "ensemble of 2 (LightGBM, XGBoost)", "ensemble": True, "stopped_early": stopped_early,
                   "time_budget_s": params.get("time_budget_s"), "seconds": 30.1},
        "refit_on_all_rows": True, "sampled": None,
        "feature_importance": [{"feature": "sqft", "importance": 0.8}, {"feature": "city", "importance": 0.2}],
        "predicted_vs_actual": [[1.0, 1.1, 5], [2.0, 1.9, 6], [3.0, 3.2, 5]], "duration_s": 30.5, "warnings": [],
        "model_dir": "/home/ann/.statsbot/models/auto"}


class ScriptedWorker:
    """Connects with a token, answers each job after one progress frame; runs in its own thread."""

    def __init__(self, ws_url: str, token: str, answer: Answer = default_answer) -> None:
        self.ws_url = ws_url
        self.token = token
        self.answer = answer
        self.jobs: list[dict[str, Any]] = []
        self.cancelled: list[str] = []
        self.stopped_early: list[str] = []
        self.hold = threading.Event()  # set: keep jobs running (no answer) until released
        self.connected = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._socket = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    def start(self) -> ScriptedWorker:
        self._thread.start()
        assert self.connected.wait(15), "the scripted worker did not connect"
        return self

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        async with websockets.connect(self.ws_url) as socket:
            self._socket = socket
            await socket.send(json.dumps({"type": "auth", "token": self.token, "machine": MACHINE,
                                          "running_jobs": []}))
            response = json.loads(await socket.recv())
            assert response["success"], response
            self.connected.set()
            try:
                async for raw in socket:
                    await self._handle(socket, json.loads(raw))
            except websockets.ConnectionClosed:
                pass

    async def _handle(self, socket, frame: dict[str, Any]) -> None:
        if frame["type"] == "cancel":
            self.cancelled.append(frame["job_id"])
            await socket.send(json.dumps({"type": "result", "job_id": frame["job_id"], "success": False,
                                          "error": "Cancelled.", "error_code": "cancelled"}))
        if frame["type"] == "stop_early":
            self.stopped_early.append(frame["job_id"])
            job = next(j for j in self.jobs if j["job_id"] == frame["job_id"])
            await socket.send(json.dumps({"type": "result", "job_id": frame["job_id"], "success": True,
                                          "data": auto_answer(job["params"], stopped_early=True)}))
        if frame["type"] != "job":
            return
        self.jobs.append(frame)
        progress: dict[str, Any] = {"type": "progress", "job_id": frame["job_id"], "progress": 50,
                                    "status": "working", "message": "Halfway there"}
        if frame["params"].get("model_type") == "auto":
            progress["search"] = SEARCH
        await socket.send(json.dumps(progress))
        if self.hold.is_set():
            return
        await socket.send(json.dumps({"type": "result", "job_id": frame["job_id"], **self.answer(frame)}))

    def stop(self) -> None:
        if self._loop is not None and self._socket is not None and self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(self._socket.close(), self._loop).result(10)
        self._thread.join(10)
