"""Training time of the worker's LightGBM vs its (size-limited) random forest on the same data.

Generates a numeric table (default 200k rows x 20 features, regression and classification
targets), writes it to CSV and runs the worker's own train job for each model, printing the
time of each and the forest/LightGBM ratio.

    python benchmarks/train_time.py
    python benchmarks/train_time.py --rows 500000 --models lightgbm,random_forest,linear
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from _worker import load_worker  # benchmarks/_worker.py: run these as scripts


def generate(path: Path, rows: int, features: int, seed: int = 0) -> None:
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        rng.normal(size=(rows, features)).round(5), columns=[f"f{i}" for i in range(features)]
    )
    signal = frame["f0"] * 2 - frame["f1"] + np.sin(frame["f2"] * 3) + frame["f3"] * frame["f4"]
    frame["y_reg"] = (signal + rng.normal(scale=0.5, size=rows)).round(4)
    frame["y_cls"] = np.where(signal + rng.normal(scale=0.5, size=rows) > 0, "yes", "no")
    frame.to_csv(path, index=False)


def train(sw, settings, path: Path, target: str, model: str, drop: str) -> tuple[float, dict]:
    features = [c for c in _header(path) if c not in (target, drop)]
    params = {
        "file_path": str(path),
        "target_column": target,
        "model_type": model,
        "feature_columns": features,
    }
    started = time.perf_counter()
    result = sw.execute_job(sw.job_train, sw.JobContext("t", params, settings))
    seconds = time.perf_counter() - started
    if not result["success"]:
        raise SystemExit(f"{model} failed: {result['error']}")
    return seconds, result["data"]["main_metric"]


def _header(path: Path) -> list[str]:
    with open(path, encoding="utf-8") as fh:
        return fh.readline().strip().split(",")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--features", type=int, default=20)
    parser.add_argument("--models", default="lightgbm,random_forest")
    parser.add_argument("--tasks", default="regression,classification")
    args = parser.parse_args()
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    sw = load_worker()
    table = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(os.path.realpath(tmp))
        settings = sw.Settings(
            paths=sw.Paths(root / "home"),
            server="ws://127.0.0.1:9/ws/worker/",
            machine_id="bench",
            allowed_roots=[root],
            models_dir=root / "home" / "models",
            max_file_bytes=1 << 40,
        )
        data = root / "train.csv"
        generate(data, args.rows, args.features)
        print(
            f"{args.rows:,} rows x {args.features} features, {data.stat().st_size / 2**20:.0f} MB CSV",
            flush=True,
        )
        for task in [t.strip() for t in args.tasks.split(",") if t.strip()]:
            target, drop = ("y_reg", "y_cls") if task == "regression" else ("y_cls", "y_reg")
            times = {}
            for model in models:
                seconds, metric = train(sw, settings, data, target, model, drop)
                times[model] = seconds
                table.append((task, model, seconds, f"{metric['name']}={metric['value']}"))
                print(f"  {task} {model}: {seconds:.1f}s", flush=True)
            if "lightgbm" in times:
                for model in models:
                    if model != "lightgbm":
                        table.append((task, f"{model}/lightgbm", times[model] / times["lightgbm"], None))
    print()
    print(f"{'task':>15} {'model':>24} {'time s':>8} {'held-out':>18}")
    for task, model, seconds, metric in table:
        if metric is None:
            print(f"{task:>15} {model:>24} {seconds:>7.1f}x")
        else:
            print(f"{task:>15} {model:>24} {seconds:>8.1f} {metric:>18}")


if __name__ == "__main__":
    main()
