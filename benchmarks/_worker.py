"""The worker script loaded as a module, for the benchmarks (it is one file, not a package)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

SCRIPT = Path(__file__).resolve().parents[1] / "worker_script" / "statsbot_worker.py"


def load_worker() -> ModuleType:
    spec = importlib.util.spec_from_file_location("statsbot_worker_bench", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module
