"""Prediction throughput and peak memory: the worker's chunked predict vs reading everything.

For each size a CSV of about that many MB is generated (20 numeric + 2 text features), a
LightGBM model is trained on its first 100k rows with the worker's own train job, and then
each mode runs in a fresh process:

* ``chunked`` - the worker's ``predict`` job (100k-row chunks appended to the output CSV);
* ``naive``   - read the whole CSV, predict it at once, write the output in one go.

Peak RSS is read with ``resource.getrusage(RUSAGE_CHILDREN)`` by a small runner process
whose only child is the measured job, so every figure belongs to exactly one run.

    python benchmarks/predict_memory.py                  # 100 MB and 1 GB
    python benchmarks/predict_memory.py --sizes 50,200   # quicker
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

from _worker import load_worker  # benchmarks/_worker.py: run these as scripts


def generate_csv(path: Path, size_mb: float, seed: int = 0) -> int:
    """Append random rows until the file holds about size_mb megabytes; returns the row count."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    target_bytes = int(size_mb * 1024 * 1024)
    rows = 0
    with open(path, "w", encoding="utf-8", newline="") as fh:
        while fh.tell() < target_bytes:
            n = 50_000
            frame = pd.DataFrame(rng.normal(size=(n, 20)).round(5), columns=[f"f{i}" for i in range(20)])
            frame["city"] = rng.choice(["Oslo", "Rome", "Lima", "Pune", "Kyiv"], n)
            frame["plan"] = rng.choice(["free", "pro", "team"], n)
            frame["y"] = (
                frame["f0"] * 3 - frame["f1"] + (frame["city"] == "Rome") * 2 + rng.normal(size=n)
            ).round(4)
            frame.to_csv(fh, header=rows == 0, index=False)
            rows += n
    return rows


def settings_for(sw, root: Path, home: Path):
    return sw.Settings(
        paths=sw.Paths(home),
        server="ws://127.0.0.1:9/ws/worker/",
        machine_id="bench",
        allowed_roots=[root],
        models_dir=home / "models",
        max_file_bytes=1 << 40,
    )


def train_model(sw, root: Path, home: Path, data: Path) -> str:
    sample = root / "train_sample.csv"
    with open(data, encoding="utf-8") as src, open(sample, "w", encoding="utf-8") as dst:
        for i, line in enumerate(src):
            if i > 100_000:
                break
            dst.write(line)
    ctx = sw.JobContext(
        "train", {"file_path": str(sample), "target_column": "y"}, settings_for(sw, root, home)
    )
    result = sw.execute_job(sw.job_train, ctx)
    if not result["success"]:
        raise SystemExit(f"training failed: {result['error']}")
    return result["data"]["model_id"]


def run_job(mode: str, data: str, model_id: str, home: str, chunk_rows: int) -> dict:
    """The measured work, in its own process."""
    sw = load_worker()
    root = Path(data).parent
    settings = settings_for(sw, root, Path(home))
    out = root / f"out_{mode}.csv"
    started = time.perf_counter()
    if mode == "chunked":
        ctx = sw.JobContext("p", {"file_path": data, "model_id": model_id, "output_path": str(out)}, settings)
        result = sw.execute_job(lambda c: sw.job_predict(c, chunk_rows=chunk_rows), ctx)
        if not result["success"]:
            raise SystemExit(result["error"])
        rows = result["data"]["rows"]
    else:
        import pandas as pd

        metadata, estimator = sw.load_model(settings.models_dir, model_id)
        frame = pd.read_csv(data)
        labels, _ = sw.predict_frame(estimator, metadata, frame)
        frame["prediction"] = labels
        with open(out, "wb") as fh:
            sw.CsvSink(fh).write(frame)  # the same writer as the chunked job
        rows = len(frame)
    seconds = time.perf_counter() - started
    out.unlink()
    return {"rows": rows, "seconds": seconds}


def measure(mode: str, data: Path, model_id: str, home: Path, chunk_rows: int) -> dict:
    """Runner process: start the job as its only child and read that child's peak RSS."""
    import resource

    cmd = [sys.executable, __file__, "--_job", mode, str(data), model_id, str(home), str(chunk_rows)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{mode} run failed:\n{proc.stderr[-2000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    result["peak_rss_mb"] = peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024
    return result


def fresh_measurement(mode: str, data: Path, model_id: str, home: Path, chunk_rows: int) -> dict:
    cmd = [sys.executable, __file__, "--_measure", mode, str(data), model_id, str(home), str(chunk_rows)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(proc.stderr[-2000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] in ("--_job", "--_measure"):
        mode, data, model_id, home, chunk_rows = sys.argv[2:7]
        fn = run_job if sys.argv[1] == "--_job" else measure
        print(
            json.dumps(
                fn(
                    mode,
                    data if fn is run_job else Path(data),
                    model_id,
                    home if fn is run_job else Path(home),
                    int(chunk_rows),
                )
            )
        )
        return
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--sizes", default="100,1000", help="CSV sizes in MB, comma separated (default 100,1000)"
    )
    parser.add_argument("--chunk-rows", type=int, default=100_000)
    parser.add_argument("--workdir", help="where to put the generated files (default: a temporary folder)")
    args = parser.parse_args()
    sizes = [float(s) for s in args.sizes.split(",") if s.strip()]
    sw = load_worker()
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        root = Path(os.path.realpath(tmp))
        home = root / "home"
        rows_out = []
        model_id = None
        for size in sizes:
            data = root / f"data_{int(size)}mb.csv"
            t0 = time.perf_counter()
            rows = generate_csv(data, size)
            print(
                f"generated {data.name}: {rows:,} rows, {data.stat().st_size / 2**20:.0f} MB "
                f"in {time.perf_counter() - t0:.0f}s",
                flush=True,
            )
            if model_id is None:
                model_id = train_model(sw, root, home, data)
            mb = data.stat().st_size / 2**20
            results = {}
            for mode in ("chunked", "naive"):
                r = fresh_measurement(mode, data, model_id, home, args.chunk_rows)
                results[mode] = r
                rows_out.append(
                    (f"{mb:.0f}", mode, r["rows"], r["seconds"], mb / r["seconds"], r["peak_rss_mb"])
                )
                print(f"  {mode}: {r['seconds']:.1f}s, peak {r['peak_rss_mb']:.0f} MB", flush=True)
            data.unlink()
            rows_out.append(
                (
                    f"{mb:.0f}",
                    "naive/chunked",
                    None,
                    results["naive"]["seconds"] / results["chunked"]["seconds"],
                    None,
                    results["naive"]["peak_rss_mb"] / results["chunked"]["peak_rss_mb"],
                )
            )
    print()
    print(f"{'CSV MB':>7} {'mode':>14} {'rows':>11} {'time s':>8} {'MB/s':>7} {'peak RSS MB':>12}")
    for size, mode, rows, secs, rate, rss in rows_out:
        if rows is None:
            print(f"{size:>7} {mode:>14} {'':>11} {secs:>7.2f}x {'':>7} {rss:>11.2f}x")
        else:
            print(f"{size:>7} {mode:>14} {rows:>11,} {secs:>8.1f} {rate:>7.1f} {rss:>12.0f}")


if __name__ == "__main__":
    main()
