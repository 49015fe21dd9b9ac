"""Peak memory of training on files bigger than the worker's memory budget (issue 14).

Writes a numeric CSV of SIZE (10 feature columns, a binary text target with a 2 % class, a
numeric target), then trains through the worker's own train job in a fresh subprocess per run
and prints that process's peak RSS and the rows used. The worker samples a file whose table
would not fit in TRAIN_MEMORY_BYTES (400 MB), so peak RSS should stay flat as the file grows
(the ratio printed is against the smallest file, measured in the same run).

    python benchmarks/train_memory.py --gb 0.25,1          # 1x and 4x
    python benchmarks/train_memory.py --gb 1,4             # the issue's 1 GB and 4 GB
    python benchmarks/train_memory.py --quick              # 40 MB and 160 MB with a 16 MB budget
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RUNNER = r"""
import json, resource, sys, time
sys.path.insert(0, sys.argv[1])
from _worker import load_worker
sw = load_worker()
spec = json.loads(sys.argv[2])
if spec.get("budget"):
    sw.TRAIN_MEMORY_BYTES = spec["budget"]
folder = sw.Path(spec["folder"])
settings = sw.Settings(paths=sw.Paths(folder / "home"), server="ws://127.0.0.1:9/ws/worker/",
                       machine_id="bench", allowed_roots=[folder], models_dir=folder / "home" / "models",
                       max_file_bytes=64 * 1024**3)
params = {"file_path": spec["path"], "target_column": spec["target"], "model_type": spec["model"],
          "feature_columns": [f"f{i}" for i in range(10)], "time_budget_s": 30}
started = time.perf_counter()
result = sw.execute_job(sw.job_train, sw.JobContext("m", params, settings))
seconds = time.perf_counter() - started
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
print(json.dumps({"ok": result["success"], "error": result.get("error"), "seconds": seconds, "peak": peak,
                  "sampled": (result.get("data") or {}).get("sampled")}))
"""


def write_csv(path: Path, size_bytes: int) -> int:
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(0)
    rows = 0
    with open(path, "w", encoding="utf-8") as fh:
        header = True
        while fh.tell() < size_bytes:
            n = 200_000
            x = rng.normal(size=(n, 10)).round(5)
            frame = pd.DataFrame(x, columns=[f"f{i}" for i in range(10)])
            signal = x[:, 0] * 2 - x[:, 1] + np.sin(x[:, 2] * 3)
            frame["y_cls"] = np.where(signal + rng.normal(size=n) > 3.2, "rare", "common")
            frame["y_reg"] = (signal + rng.normal(scale=0.5, size=n)).round(4)
            frame.to_csv(fh, header=header, index=False)
            header = False
            rows += n
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gb", default="0.25,1", help="file sizes in GB (comma-separated)")
    parser.add_argument("--model", default="lightgbm")
    parser.add_argument("--target", default="y_cls")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--dir", default="", help="where to write the files (default: a temporary folder)")
    args = parser.parse_args()
    sizes = [0.04, 0.16] if args.quick else [float(g) for g in args.gb.split(",")]
    budget = 16 * 1024**2 if args.quick else None
    here = str(Path(__file__).resolve().parent)
    with tempfile.TemporaryDirectory(prefix="automl-mem-", dir=args.dir or None) as tmp:
        folder = Path(tmp)
        first = None
        print(f"{'file':>10}{'rows':>12}{'rows used':>12}{'peak RSS':>12}{'seconds':>9}{'vs first':>10}")
        for gb in sizes:
            path = folder / f"data_{gb}gb.csv"
            rows = write_csv(path, int(gb * 1024**3))
            spec = {"folder": tmp, "path": str(path), "target": args.target, "model": args.model, "budget": budget}
            started = time.perf_counter()
            done = subprocess.run(
                [sys.executable, "-c", RUNNER, here, json.dumps(spec)], capture_output=True, text=True
            )
            if done.returncode != 0:
                print(done.stderr[-2000:])
                return 1
            out = json.loads(done.stdout.strip().splitlines()[-1])
            if not out["ok"]:
                print(f"training failed: {out['error']}")
                return 1
            first = first or out["peak"]
            used = (out["sampled"] or {}).get("rows_used", rows)
            print(
                f"{os.path.getsize(path) / 1024**3:>8.2f}GB{rows:>12,}{used:>12,}"
                f"{out['peak'] / 1024**2:>10.0f}MB{time.perf_counter() - started:>9.0f}{out['peak'] / first:>9.2f}x",
                flush=True,
            )
            path.unlink()
    return 0


if __name__ == "__main__":
    sys.exit(main())
