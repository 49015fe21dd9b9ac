"""Model quality of the worker's recommended training (model_type "auto") against a default
LightGBM, FLAML (at the same time budget, or --flaml-budget) and AutoGluon best_quality
(--ag-budget, 150 s by default), on real public tabular data sets that ship inside PyPI packages
(nothing is downloaded at run time).

Each data set has one fixed split (75 % train / 25 % test, seed 0, stratified for
classification). The product trains through the worker's own train job on the training CSV and
predicts the test CSV through its predict job; the error is TabArena's: RMSE (regression),
1 - ROC AUC (binary), log loss (multiclass). Per data set it prints each method's error; at the
end each method's mean improvability ("champ delta": 1 - best error / this method's error,
averaged over data sets; 0 % = the best method everywhere).

Data sets: scikit-learn's bundled ones (breast_cancer, diabetes, wine, digits) and, when the
ISLP package's data folder is available (``pip install --no-deps ISLP`` in a scratch venv; its
CSV files are read directly, ISLP is never imported), Default, Caravan, Wage, Bikeshare, OJ,
Carseats, College, Hitters and Auto.

FLAML and AutoGluon each run in their own environment (never in the system Python), in a
subprocess given the same training and test CSV files:
``python -m venv /tmp/automl-flaml && /tmp/automl-flaml/bin/pip install "flaml[automl]"``, then
``--flaml-python /tmp/automl-flaml/bin/python`` (the default when that file exists);
``python3.11 -m venv /tmp/automl-ag && /tmp/automl-ag/bin/pip install "autogluon.tabular[lightgbm,catboost,xgboost]"``,
then ``--autogluon-python /tmp/automl-ag/bin/python`` (the default when that file exists, except
with --quick). AutoGluon fits ``presets="best_quality"`` with ``time_limit`` = --ag-budget and its
eval_metric set to the same error.

    python benchmarks/quality.py --quick --no-flaml      # CI: 3 small sets, 10 s budget
    python benchmarks/quality.py --budgets 120 --ag-budget 150 --islp-data /tmp/automl-data/lib/python3.11/site-packages/ISLP/data
    python benchmarks/quality.py --budgets 30 --flaml-budget 60 --no-autogluon --islp-data …
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from _worker import load_worker  # benchmarks/_worker.py: run these as scripts

DEFAULT_FLAML = Path("/tmp/automl-flaml/bin/python")
DEFAULT_AUTOGLUON = Path("/tmp/automl-ag/bin/python")
QUICK = ("breast_cancer", "diabetes", "wine")

FLAML_RUNNER = r"""
import json, sys, time
import numpy as np, pandas as pd
from flaml import AutoML
spec = json.loads(sys.argv[1])
target = spec["target"]
train = pd.read_csv(spec["train"], dtype={target: str} if spec["kind"] != "regression" else None)
test = pd.read_csv(spec["test"])
X, y = train.drop(columns=[target]), train[target]
for c in X.columns:
    if X[c].dtype == object:
        cats = pd.CategoricalDtype(sorted(X[c].dropna().astype(str).unique()))
        X[c] = X[c].astype(str).where(X[c].notna()).astype(cats)
        test[c] = test[c].astype(str).where(test[c].notna()).astype(cats)
metric = {"regression": "rmse", "binary": "roc_auc", "multiclass": "log_loss"}[spec["kind"]]
task = "regression" if spec["kind"] == "regression" else "classification"
automl = AutoML()
automl.fit(X, y, task=task, metric=metric, time_budget=spec["budget"], verbose=0, seed=0, n_jobs=-1)
Xt = test[X.columns]
if task == "regression":
    out = {"pred": automl.predict(Xt).tolist()}
else:
    out = {"proba": automl.predict_proba(Xt).tolist(), "classes": [str(c) for c in automl.classes_]}
json.dump(out, open(spec["out"], "w"))
"""

AUTOGLUON_RUNNER = r"""
import json, sys, time
import pandas as pd
from autogluon.tabular import TabularPredictor
started = time.monotonic()
spec = json.loads(sys.argv[1])
target = spec["target"]
train = pd.read_csv(spec["train"], dtype={target: str} if spec["kind"] != "regression" else None)
test = pd.read_csv(spec["test"])
metric = {"regression": "root_mean_squared_error", "binary": "roc_auc", "multiclass": "log_loss"}[spec["kind"]]

def fit(path, time_limit, **extra):
    predictor = TabularPredictor(label=target, problem_type=spec["kind"], eval_metric=metric, path=path, verbosity=0)
    return predictor.fit(train, presets="best_quality", time_limit=time_limit, **extra)

note = ""
try:
    predictor = fit(spec["model_dir"], spec["budget"])
except AssertionError as exc:
    # AutoGluon 1.6 without ray runs its DyStack sub-fit in-process; when that sub-fit trains no
    # model in its quarter of the time (small files on a loaded machine), the main fit then
    # raises "Learner is already fit". Do what it had decided (num_stack_levels=1), in the time left.
    if "already fit" not in str(exc):
        raise
    left = max(10.0, spec["budget"] - (time.monotonic() - started))
    predictor = fit(spec["model_dir"] + "_again", left, dynamic_stacking=False, num_stack_levels=1)
    note = ", refit without DyStack (its sub-fit trained no model)"
if spec["kind"] == "regression":
    out = {"pred": predictor.predict(test).tolist()}
else:
    proba = predictor.predict_proba(test)
    out = {"proba": proba.to_numpy().tolist(), "classes": [str(c) for c in proba.columns]}
out["model"] = str(predictor.model_best) + note
json.dump(out, open(spec["out"], "w"))
"""


# --------------------------------------------------------------------------- data sets


def _sklearn(name: str) -> Callable[[], tuple]:
    def load() -> tuple:
        import sklearn.datasets as ds

        frame = getattr(ds, f"load_{name}")(as_frame=True).frame
        kind = {"diabetes": "regression", "breast_cancer": "binary"}.get(name, "multiclass")
        if kind != "regression":
            frame["target"] = "c" + frame["target"].astype(str)
        return frame, "target", kind

    return load


def _islp(file: str, target: str, kind: str, drop: tuple = ()) -> Callable[[Path], tuple]:
    def load(folder: Path) -> tuple:
        import pandas as pd

        frame = pd.read_csv(folder / file)
        frame = frame.drop(columns=[c for c in drop if c in frame.columns])
        frame = frame[frame[target].notna()].reset_index(drop=True)
        return frame, target, kind

    return load


SKLEARN_SETS = {name: _sklearn(name) for name in ("breast_cancer", "diabetes", "wine", "digits")}
ISLP_SETS = {
    "Default": _islp("Default.csv", "default", "binary"),
    "Caravan": _islp("Caravan.csv", "Purchase", "binary"),
    "Wage": _islp("Wage.csv", "wage", "regression", drop=("logwage",)),  # logwage is the target
    "Bikeshare": _islp("Bikeshare.csv", "bikers", "regression", drop=("casual", "registered")),  # sum
    "OJ": _islp("OJ.csv", "Purchase", "binary"),
    "Carseats": _islp("Carseats.csv", "Sales", "regression"),
    "College": _islp("College.csv", "Grad.Rate", "regression"),
    "Hitters": _islp("Hitters.csv", "Salary", "regression"),
    "Auto": _islp("Auto.csv", "mpg", "regression"),
}


def split(frame, target: str, kind: str) -> tuple:
    from sklearn.model_selection import train_test_split

    stratify = frame[target] if kind != "regression" else None
    return train_test_split(frame, test_size=0.25, random_state=0, stratify=stratify)


# --------------------------------------------------------------------------- errors


def error(kind: str, y_true, pred, classes: list[str] | None = None) -> float:
    """TabArena's error: RMSE, 1 - ROC AUC, log loss (pred: numbers, or class probabilities)."""
    import numpy as np
    from sklearn.metrics import log_loss, mean_squared_error, roc_auc_score

    if kind == "regression":
        return float(math.sqrt(mean_squared_error(y_true, pred)))
    proba = np.clip(np.asarray(pred, dtype="float64"), 1e-15, 1)
    proba = proba / proba.sum(axis=1, keepdims=True)
    labels = [str(c) for c in classes]
    y = [str(v) for v in y_true]
    if kind == "binary":
        return 1 - float(roc_auc_score([v == labels[1] for v in y], proba[:, 1]))
    return float(log_loss(y, proba, labels=labels))


def _classes(train, target: str) -> list[str]:
    return sorted(str(c) for c in train[target].unique())


# --------------------------------------------------------------------------- methods


def run_product(sw, settings, folder: Path, name: str, train, test, target: str, kind: str, budget: int) -> tuple:
    train_csv, test_csv = folder / f"{name}_train.csv", folder / f"{name}_test.csv"
    train.to_csv(train_csv, index=False)
    test.drop(columns=[target]).to_csv(test_csv, index=False)
    params = {"file_path": str(train_csv), "target_column": target, "model_type": "auto", "time_budget_s": budget}
    started = time.perf_counter()
    trained = sw.execute_job(sw.job_train, sw.JobContext(f"q-{name}", params, settings))
    if not trained["success"]:
        raise RuntimeError(f"product training failed on {name}: {trained['error']}")
    predicted = sw.execute_job(
        sw.job_predict,
        sw.JobContext(f"p-{name}", {"file_path": str(test_csv), "model_id": trained["data"]["model_id"]}, settings),
    )
    seconds = time.perf_counter() - started
    if not predicted["success"]:
        raise RuntimeError(f"product prediction failed on {name}: {predicted['error']}")
    import pandas as pd

    out = pd.read_csv(predicted["data"]["output_path"])
    Path(predicted["data"]["output_path"]).unlink()
    if kind == "regression":
        return error(kind, test[target], out["prediction"]), seconds, trained["data"]
    classes = [str(c) for c in trained["data"]["classes"]]
    proba = out[[f"proba_{c}" for c in classes]].to_numpy()
    return error(kind, test[target], proba, classes), seconds, trained["data"]


def run_default_lightgbm(train, test, target: str, kind: str) -> tuple:
    """LGBMClassifier() / LGBMRegressor() with text columns as pandas categories."""
    import lightgbm as lgb
    import pandas as pd

    X, Xt = train.drop(columns=[target]).copy(), test.drop(columns=[target]).copy()
    for c in X.columns:
        if X[c].dtype == object or str(X[c].dtype) in ("str", "string"):
            cats = pd.CategoricalDtype(sorted(X[c].dropna().astype(str).unique()))
            X[c] = X[c].astype(str).where(X[c].notna()).astype(cats)
            seen = Xt[c].notna() & Xt[c].astype(str).isin(cats.categories)  # unseen text: missing
            Xt[c] = Xt[c].astype(str).where(seen).astype(cats)
    started = time.perf_counter()
    if kind == "regression":
        model = lgb.LGBMRegressor(verbose=-1, n_jobs=1).fit(X, train[target])  # 1 thread: same model, no spinning
        return error(kind, test[target], model.predict(Xt)), time.perf_counter() - started
    y = train[target].astype(str)
    model = lgb.LGBMClassifier(verbose=-1, n_jobs=1).fit(X, y)
    classes = [str(c) for c in model.classes_]
    return error(kind, test[target], model.predict_proba(Xt), classes), time.perf_counter() - started


def run_external(
    label: str, runner: str, python: Path, folder: Path, name: str, train, test, target: str, kind: str, budget: int
) -> tuple:
    """Run an AutoML library in its own environment on the same files; returns (error, seconds, note)."""
    import numpy as np

    slug = label.split()[0].lower()
    spec = {
        "train": str(folder / f"{name}_{slug}_train.csv"),
        "test": str(folder / f"{name}_{slug}_test.csv"),
        "out": str(folder / f"{name}_{slug}.json"),
        "model_dir": str(folder / f"{name}_{slug}_models"),
        "target": target,
        "kind": kind,
        "budget": budget,
    }
    tr = train.copy()
    if kind != "regression":
        tr[target] = tr[target].astype(str)
    tr.to_csv(spec["train"], index=False)
    test.drop(columns=[target]).to_csv(spec["test"], index=False)
    started = time.perf_counter()
    done = subprocess.run(
        [str(python), "-c", runner, json.dumps(spec)], capture_output=True, text=True, timeout=budget * 4 + 300
    )
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{label} failed on {name}: {done.stderr[-500:]}")
    out = json.loads((folder / f"{name}_{slug}.json").read_text())
    note = out.get("model", "")
    if kind == "regression":
        return error(kind, test[target], out["pred"]), seconds, note
    classes = _classes(train, target)
    index = {c: i for i, c in enumerate(out["classes"])}
    proba = np.asarray(out["proba"])[:, [index[c] for c in classes]]
    return error(kind, test[target], proba, classes), seconds, note


def run_flaml(python: Path, folder: Path, name: str, train, test, target: str, kind: str, budget: int) -> tuple:
    return run_external("FLAML", FLAML_RUNNER, python, folder, name, train, test, target, kind, budget)


def run_autogluon(python: Path, folder: Path, name: str, train, test, target: str, kind: str, budget: int) -> tuple:
    return run_external("AutoGluon", AUTOGLUON_RUNNER, python, folder, name, train, test, target, kind, budget)


# --------------------------------------------------------------------------- main


def improvability(errors: dict[str, dict[str, float]]) -> dict[str, float]:
    """Mean over data sets of 1 - best error / this method's error (in %)."""
    methods = sorted({m for per in errors.values() for m in per})
    out = {}
    for method in methods:
        values = []
        for per in errors.values():
            if method in per and all(m in per for m in methods):
                best = min(per.values())
                values.append(0.0 if per[method] <= 0 else 1 - best / per[method])
        out[method] = 100 * sum(values) / len(values) if values else math.nan
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="3 small scikit-learn sets, 10 s budget (CI)")
    parser.add_argument("--budgets", default="30,120", help="product (and FLAML) budgets in seconds")
    parser.add_argument("--sets", default="", help="comma-separated data set names, run in this order (default: all)")
    parser.add_argument("--islp-data", default=os.environ.get("ISLP_DATA", ""), help="ISLP's data folder")
    parser.add_argument("--flaml-python", default=str(DEFAULT_FLAML) if DEFAULT_FLAML.exists() else "")
    parser.add_argument("--no-flaml", action="store_true")
    parser.add_argument(
        "--flaml-budget", type=int, default=0, help="one FLAML run at this budget (default: one per --budgets entry)"
    )
    parser.add_argument(
        "--autogluon-python",
        default=None,
        help=f"AutoGluon's environment (default {DEFAULT_AUTOGLUON} when it exists, not with --quick)",
    )
    parser.add_argument("--no-autogluon", action="store_true")
    parser.add_argument("--ag-budget", type=int, default=150, help="AutoGluon best_quality time_limit in seconds")
    parser.add_argument("--json", default="", help="also write the errors to this JSON file (after each data set)")
    parser.add_argument(
        "--resume", action="store_true", help="keep the data sets already in --json with every error measured"
    )
    args = parser.parse_args()
    budgets = [10] if args.quick else [int(b) for b in args.budgets.split(",") if b]
    flaml_budgets = [args.flaml_budget] if args.flaml_budget else budgets
    loaders: dict[str, Callable[[], tuple]] = dict(SKLEARN_SETS)
    islp = Path(args.islp_data) if args.islp_data else None
    if islp and islp.is_dir():
        loaders.update({k: (lambda f=f: f(islp)) for k, f in ISLP_SETS.items()})
    elif not args.quick:
        print("ISLP data folder not given (--islp-data): only the scikit-learn data sets run.")
    wanted = [n for n in args.sets.split(",") if n]
    unknown = [n for n in wanted if n not in loaders]
    if unknown:
        parser.error(f"unknown or unavailable data sets: {', '.join(unknown)} (available: {', '.join(loaders)})")
    names = list(QUICK) if args.quick else (wanted or list(loaders))  # in the order given
    flaml = None if args.no_flaml or not args.flaml_python else Path(args.flaml_python)
    if flaml is None:
        print("FLAML: not run (no --flaml-python environment).")
    ag_python = args.autogluon_python
    if ag_python is None:
        ag_python = str(DEFAULT_AUTOGLUON) if DEFAULT_AUTOGLUON.exists() and not args.quick else ""
    autogluon = None if args.no_autogluon or not ag_python else Path(ag_python)
    if autogluon is None:
        print("AutoGluon: not run (no --autogluon-python environment).")
    errors: dict[str, dict[str, float]] = {}
    details: dict[str, list[dict]] = {}
    if args.resume and args.json and Path(args.json).exists():
        saved = json.loads(Path(args.json).read_text())
        for name, per in saved["errors"].items():
            if name in names and all(not math.isnan(d["error"]) for d in saved["details"][name]):
                errors[name], details[name] = per, saved["details"][name]
                for d in details[name]:
                    print(f"{name:<14}{d['rows']:>7} {d['task']:<10} {d['method']:<22}{d['error']:>10.4f}"
                          f"{d['seconds']:>9.1f}  {d['note']} (kept from {args.json})")
    sw = load_worker()
    with tempfile.TemporaryDirectory(prefix="automl-quality-") as tmp:
        folder = Path(tmp)
        settings = sw.Settings(
            paths=sw.Paths(folder / "home"),
            server="ws://127.0.0.1:9/ws/worker/",
            machine_id="bench",
            allowed_roots=[folder],
            models_dir=folder / "home" / "models",
            max_file_bytes=2 * 1024**3,
        )
        print(f"{'data set':<14}{'rows':>7} {'task':<10} {'method':<22}{'error':>10}{'seconds':>9}  note")
        for name in names:
            if name in errors:
                continue
            frame, target, kind = loaders[name]()
            train, test = split(frame, target, kind)
            per: dict[str, float] = {}
            rows = []
            err, secs = run_default_lightgbm(train, test, target, kind)
            per["default LightGBM"] = err
            rows.append(("default LightGBM", err, secs, ""))
            for budget in budgets:
                err, secs, data = run_product(sw, settings, folder, name, train, test, target, kind, budget)
                per[f"product {budget}s"] = err
                s = data["search"]
                note = f"{s['trials']} trials, {s['chosen']}, {data['evaluation']['method']}"
                rows.append((f"product {budget}s", err, secs, note))
            external = []
            if flaml is not None:
                external += [("FLAML", run_flaml, flaml, b) for b in flaml_budgets]
            if autogluon is not None:
                external.append(("AutoGluon best", run_autogluon, autogluon, args.ag_budget))
            for label, run, python, budget in external:
                method = f"{label} {budget}s"
                try:
                    err, secs, note = run(python, folder, name, train, test, target, kind, budget)
                    per[method] = err
                    rows.append((method, err, secs, note))
                except (RuntimeError, subprocess.TimeoutExpired) as exc:
                    rows.append((method, math.nan, 0.0, str(exc)[-80:].replace("\n", " ")))
            errors[name] = per
            details[name] = [
                {"method": m, "error": e, "seconds": round(sec, 1), "note": n, "rows": len(frame), "task": kind}
                for m, e, sec, n in rows
            ]
            for method, err, secs, note in rows:
                print(f"{name:<14}{len(frame):>7} {kind:<10} {method:<22}{err:>10.4f}{secs:>9.1f}  {note}", flush=True)
            if args.json:  # after each data set, so a long run that is stopped keeps what it measured
                Path(args.json).write_text(json.dumps({"errors": errors, "details": details}, indent=2))
    print("\nmean improvability (1 - best error / method's error, averaged over data sets; lower is better)")
    imp = improvability(errors)
    base = imp.get("default LightGBM")
    for method, value in sorted(imp.items(), key=lambda kv: kv[1]):
        ratio = f"  ({value / base:.2f}x default LightGBM's)" if base else ""
        print(f"  {method:<22}{value:6.2f} %{ratio}")
    worse = [
        n for n, per in errors.items()
        if any(per[m] > per["default LightGBM"] * 1.02 for m in per if m.startswith("product"))
    ]
    print(f"data sets where the product is > 2 % worse than default LightGBM: {', '.join(worse) or 'none'}")
    if args.json:
        Path(args.json).write_text(
            json.dumps({"errors": errors, "details": details, "improvability": imp}, indent=2, allow_nan=True)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
