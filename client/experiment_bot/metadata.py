"""Automatic metadata: where and how the experiment runs.

Everything here is collected lazily (on the sender thread, when the first process start is
sent) and the static part is cached. Nothing imports the scientific packages: versions are
read only from modules the script has already imported.
"""

from __future__ import annotations

import os
import sys
import threading
from typing import Any

KEY_PACKAGES = ("numpy", "pandas", "torch", "sklearn", "lightgbm", "xgboost", "tensorflow", "jax")
GIT_TIMEOUT = 2.0

_cache: dict[tuple[Any, ...], dict[str, Any]] = {}
_cache_lock = threading.Lock()


def script_name() -> str:
    """A human name for the running program: the script file, ``python -m`` module, or ``python``."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if spec is not None and getattr(spec, "name", None):
        name = spec.name
        return name[: -len(".__main__")] if name.endswith(".__main__") else name
    argv0 = sys.argv[0] if sys.argv and sys.argv[0] else ""
    if argv0 and argv0 not in ("-c", "-m", "-"):
        return os.path.basename(argv0)
    if "ipykernel" in sys.modules:
        return "notebook"
    return "python"


def script_dir() -> str:
    argv0 = sys.argv[0] if sys.argv else ""
    if argv0 and os.path.isfile(argv0):
        return os.path.dirname(os.path.abspath(argv0))
    return os.getcwd()


def git_info(directory: str, timeout: float = GIT_TIMEOUT) -> dict[str, Any] | None:
    """Commit, branch and dirty flag of the repository containing ``directory``; None without git."""
    import subprocess

    try:
        completed = subprocess.run(
            ["git", "status", "--porcelain=v2", "--branch", "--untracked-files=no"],
            cwd=directory,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env={**os.environ, "GIT_OPTIONAL_LOCKS": "0", "LC_ALL": "C"},
        )
    except (OSError, subprocess.SubprocessError, ValueError):
        return None
    if completed.returncode != 0:
        return None
    info: dict[str, Any] = {}
    dirty = False
    for line in completed.stdout.splitlines():
        if line.startswith("# branch.oid "):
            oid = line.split(" ", 2)[2].strip()
            if oid != "(initial)":
                info["commit"] = oid
        elif line.startswith("# branch.head "):
            head = line.split(" ", 2)[2].strip()
            if head != "(detached)":
                info["branch"] = head
        elif line and not line.startswith("#"):
            dirty = True
    if "commit" not in info:
        return None
    info["dirty"] = dirty
    return info


def environment_name() -> str | None:
    """The active virtualenv or conda environment, if any."""
    venv = os.environ.get("VIRTUAL_ENV")
    if venv:
        return os.path.basename(venv.rstrip(os.sep))
    conda = os.environ.get("CONDA_DEFAULT_ENV")
    if conda:
        return conda
    if sys.prefix != getattr(sys, "base_prefix", sys.prefix):
        return os.path.basename(sys.prefix.rstrip(os.sep))
    return None


def package_versions() -> dict[str, str]:
    """Versions of the key packages that are already imported (never imports them)."""
    versions: dict[str, str] = {}
    for name in KEY_PACKAGES:
        module = sys.modules.get(name)
        if module is None:
            continue
        version = getattr(module, "__version__", None)
        versions[name] = str(version) if version is not None else "unknown"
    return versions


def _psutil() -> Any:
    try:
        import psutil  # type: ignore[import-untyped]
    except Exception:
        return None
    return psutil


def memory_info() -> dict[str, float]:
    """Total and used physical memory in MB (psutil, /proc/meminfo or sysconf)."""
    psutil = _psutil()
    if psutil is not None:
        try:
            vm = psutil.virtual_memory()
            return {
                "memory_total_mb": round(vm.total / 2**20, 1),
                "memory_used_mb": round(vm.used / 2**20, 1),
            }
        except Exception:
            pass
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            fields = {}
            for line in handle:
                name, _, rest = line.partition(":")
                fields[name] = int(rest.split()[0])  # kB
        total = fields["MemTotal"]
        available = fields.get("MemAvailable", fields.get("MemFree", 0))
        return {
            "memory_total_mb": round(total / 1024, 1),
            "memory_used_mb": round((total - available) / 1024, 1),
        }
    except (OSError, KeyError, ValueError, IndexError):
        pass
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        return {"memory_total_mb": round(total / 2**20, 1)}
    except (AttributeError, ValueError, OSError):
        return {}


def peak_memory_mb() -> float | None:
    """Peak resident memory of this process in MB (getrusage on POSIX, psutil elsewhere)."""
    try:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        # Linux reports kilobytes, macOS bytes.
        return round(peak / (2**20 if sys.platform == "darwin" else 1024), 1)
    except (ImportError, OSError, ValueError):
        pass
    psutil = _psutil()
    if psutil is not None:
        try:
            info = psutil.Process().memory_info()
            return round(getattr(info, "peak_wset", info.rss) / 2**20, 1)
        except Exception:
            return None
    return None


def system_snapshot() -> dict[str, Any]:
    """CPU count, load average and memory right now."""
    snapshot: dict[str, Any] = {"cpu_count": os.cpu_count()}
    if hasattr(os, "getloadavg"):
        try:
            snapshot["load_avg"] = [round(value, 2) for value in os.getloadavg()]
        except OSError:
            pass
    snapshot.update(memory_info())
    return snapshot


def static_metadata(*, include_git: bool = True, include_system: bool = True) -> dict[str, Any]:
    """Facts that do not change while the process runs; computed once and cached."""
    cache_key = (include_git, include_system, os.getcwd(), script_dir())
    with _cache_lock:
        cached = _cache.get(cache_key)
    if cached is not None:
        return dict(cached)
    import platform
    import socket

    data: dict[str, Any] = {
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "script": script_name(),
        "argv0": sys.argv[0] if sys.argv else "",
        "cwd": os.getcwd(),
        "host": socket.gethostname(),
        "pid": os.getpid(),
    }
    env_name = environment_name()
    if env_name:
        data["env"] = env_name
    if include_system:
        data["platform"] = platform.platform(terse=True)
    if include_git:
        git = git_info(script_dir())
        if git:
            data["git"] = git
    with _cache_lock:
        _cache[cache_key] = data
    return dict(data)


def collect(*, include_git: bool = True, include_system: bool = True) -> dict[str, Any]:
    """The metadata sent with a process start."""
    data = static_metadata(include_git=include_git, include_system=include_system)
    data["pid"] = os.getpid()
    packages = package_versions()
    if packages:
        data["packages"] = packages
    if include_system:
        data["system"] = system_snapshot()
    return data


def light() -> dict[str, Any]:
    """The cheap metadata attached to plain notifications (no subprocess, no file reads)."""
    import socket

    return {"host": socket.gethostname(), "script": script_name()}
