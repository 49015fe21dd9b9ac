"""Why a run crashed, in one line: the user's own frames and a library of interpretations.

``diagnose(exc, tb)`` is what a crash report carries besides the traceback::

    {"hint": "No column 'lable' in DataFrame df; nearest: 'label', 'labels'",
     "frames": [{"file": "train.py", "line": 42, "function": "step", "code": "y = df['lable']"}]}

``frames`` are the user's own frames (not the standard library, not site-packages, not this
package), outermost first: the last one is the failing line. ``hint`` comes from the first
interpretation in :data:`INTERPRETATIONS` that recognises the exception. Interpretations run
in the crashing process, so they can read the failing frame's locals (a DataFrame's columns)
and the working directory; only the hint text leaves the process. Nothing here raises.
"""

from __future__ import annotations

import difflib
import functools
import os
import re
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from types import FrameType, TracebackType

MAX_HINT = 400
MAX_FRAMES = 6
MAX_FILE = 200
MAX_CODE = 300

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


# --------------------------------------------------------------------------- the user's frames


@functools.lru_cache(maxsize=1)
def _stdlib_dirs() -> tuple[str, ...]:
    import sysconfig

    dirs = {os.path.dirname(os.__file__)}
    for name in ("stdlib", "platstdlib"):
        try:
            dirs.add(sysconfig.get_paths()[name])
        except KeyError:
            pass
    return tuple(os.path.abspath(d) + os.sep for d in dirs if d)


def is_user_file(filename: str) -> bool:
    """True for the user's code: not the standard library, site-packages or experiment_bot.
    Code run with ``python -c`` (``<string>``) or typed in a REPL (``<stdin>``) is the user's."""
    if filename.startswith("<"):
        return filename in ("<string>", "<stdin>") or filename.startswith("<ipython-input")
    path = os.path.abspath(filename)
    if path.startswith(_PACKAGE_DIR + os.sep):
        return False
    parts = path.split(os.sep)
    if "site-packages" in parts or "dist-packages" in parts:
        return False
    return not path.startswith(_stdlib_dirs())


def _short_path(filename: str) -> str:
    if filename.startswith("<"):
        return filename
    path = os.path.abspath(filename)
    try:
        relative = os.path.relpath(path)
    except ValueError:  # another drive (Windows)
        relative = path
    shown = relative if not relative.startswith("..") else path
    return shown if len(shown) <= MAX_FILE else "…" + shown[-(MAX_FILE - 1):]


@dataclass(frozen=True)
class Frame:
    file: str
    line: int
    function: str
    code: str

    def as_dict(self) -> dict[str, Any]:
        return {"file": self.file, "line": self.line, "function": self.function, "code": self.code}

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line} in {self.function}"


def _walk(tb: TracebackType | None) -> list[tuple[FrameType, int]]:
    out = []
    while tb is not None:
        out.append((tb.tb_frame, tb.tb_lineno))
        tb = tb.tb_next
    return out


def user_frames(tb: TracebackType | None, limit: int = MAX_FRAMES) -> list[Frame]:
    """The user's frames of ``tb``, outermost first, at most ``limit`` (the innermost ones)."""
    import linecache

    frames = []
    for frame, lineno in _walk(tb):
        filename = frame.f_code.co_filename
        if not is_user_file(filename):
            continue
        code = linecache.getline(filename, lineno).strip()
        frames.append(Frame(_short_path(filename), lineno, frame.f_code.co_name[:100], code[:MAX_CODE]))
    return frames[-limit:] if limit else []


# --------------------------------------------------------------------------- interpretations


@dataclass
class Context:
    """What an interpretation may look at besides the exception."""

    exc: BaseException
    tb: TracebackType | None
    files: list[str] = field(default_factory=list)  # every frame's file, outermost first
    locals: dict[str, Any] = field(default_factory=dict)  # of the innermost user frame
    user_file: str | None = None  # the innermost user frame's file (absolute)
    line: str = ""  # the innermost user frame's failing source line
    #: False (``error_verbosity = "low"``): hints name nothing taken from the user's data
    #: (no dict keys, DataFrame columns, variable names or directory entries).
    names: bool = True
    cwd: str = ""
    environ: dict[str, str] | os._Environ[str] = field(default_factory=dict)

    @property
    def message(self) -> str:
        try:
            return str(self.exc)
        except Exception:
            return ""

    def through(self, package: str) -> bool:
        """True when the traceback passes through ``package`` (e.g. "pandas")."""
        marker = f"{os.sep}{package}{os.sep}"
        return any(marker in name for name in self.files)


Interpretation = Callable[[Context], "str | None"]
#: (name, function) in the order they are tried; the first hint wins.
INTERPRETATIONS: list[tuple[str, Interpretation]] = []


def interpretation(name: str) -> Callable[[Interpretation], Interpretation]:
    def register(func: Interpretation) -> Interpretation:
        INTERPRETATIONS.append((name, func))
        return func

    return register


def _type_names(exc: BaseException) -> set[str]:
    return {cls.__name__ for cls in type(exc).__mro__}


def _gib(text: str) -> str:
    return text.replace("GiB", " GiB").replace("MiB", " MiB").replace("  ", " ")


@interpretation("cuda_out_of_memory")
def cuda_out_of_memory(ctx: Context) -> str | None:
    text = ctx.message
    names = _type_names(ctx.exc)
    gpu = (
        "CUDA out of memory" in text
        or "MPS backend out of memory" in text
        or "HIP out of memory" in text
        or ("OutOfMemoryError" in names and "torch" in type(ctx.exc).__module__)
        or ("ResourceExhaustedError" in names and "OOM" in text)
    )
    if not gpu:
        return None
    details = []
    wanted = re.search(r"Tried to allocate ([\d.]+ ?[KMGT]iB)", text)
    if wanted:
        details.append(f"tried to allocate {_gib(wanted.group(1))}")
    free = re.search(r"GPU (\d+) has a total capacity of ([\d.]+ ?[KMGT]iB) of which ([\d.]+ ?[KMGT]iB) is free", text)
    if free:
        details.append(f"GPU {free.group(1)}: {_gib(free.group(3))} free of {_gib(free.group(2))}")
    said = f" ({'; '.join(details)})" if details else ""
    return (
        f"GPU out of memory{said}: lower the batch size, use mixed precision or gradient accumulation, "
        "and don't keep tensors across steps (log loss.item(), not loss)"
    )


def _ram_total() -> str:
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return ""
    return f"; this machine has {total / 2**30:.1f} GiB of RAM" if total > 0 else ""


@interpretation("cpu_out_of_memory")
def cpu_out_of_memory(ctx: Context) -> str | None:
    text = ctx.message
    if not isinstance(ctx.exc, MemoryError) and "DefaultCPUAllocator: can't allocate memory" not in text:
        return None
    array = re.search(r"Unable to allocate ([\d.]+ ?[KMGTP]iB) for an array with shape (\([^)]*\)) and data type (\w+)",
                      text)
    if array:
        what = f"tried to allocate {_gib(array.group(1))} for a {array.group(3)} array of shape {array.group(2)}"
    else:
        wanted = re.search(r"allocate memory: you tried to allocate (\d+) bytes", text)
        what = f"tried to allocate {int(wanted.group(1)) / 2**30:.2f} GiB" if wanted else "an allocation failed"
    return (
        f"Out of RAM: {what}{_ram_total()}. Process the data in chunks, use a smaller dtype "
        "(float32) or memory-map it"
    )


_SHAPE_PATTERNS: list[tuple[re.Pattern[str], Callable[[re.Match[str]], str]]] = [
    (re.compile(r"mat1 and mat2 shapes cannot be multiplied \((\d+)x(\d+) and (\d+)x(\d+)\)"),
     lambda m: f"Shape mismatch: the input has {m.group(2)} features but the layer expects {m.group(3)} "
               f"({m.group(1)}x{m.group(2)} @ {m.group(3)}x{m.group(4)}); fix the layer's in_features or the "
               "input's flattening"),
    (re.compile(r"The size of tensor a \((\d+)\) must match the size of tensor b \((\d+)\) at non-singleton "
                r"dimension (\d+)"),
     lambda m: f"Shape mismatch: sizes {m.group(1)} and {m.group(2)} meet in dimension {m.group(3)}; print the "
               "operands' .shape on the failing line (a missing unsqueeze/reshape, or predictions vs targets)"),
    (re.compile(r"operands could not be broadcast together with shapes (\([^)]*\)) ?(\([^)]*\))"),
     lambda m: f"Shape mismatch: arrays of shapes {m.group(1)} and {m.group(2)} cannot be combined element-wise; "
               "align them (reshape, [:, None]) or check which one is transposed"),
    (re.compile(r"shapes (\([^)]*\)) and (\([^)]*\)) not aligned"),
     lambda m: f"Shape mismatch: a matrix product of {m.group(1)} and {m.group(2)} needs the inner sizes to agree; "
               "transpose one of them (.T) or check the feature count"),
    (re.compile(r"size mismatch for ([\w.]+): copying a param with shape (.+?) from checkpoint, the shape in "
                r"current model is (.+?)\."),
     lambda m: f"The checkpoint does not fit the model: {m.group(1)} is {m.group(2)} in the checkpoint but "
               f"{m.group(3)} in the model (another architecture or number of classes)"),
    (re.compile(r"Found input variables with inconsistent numbers of samples: \[([\d, ]+)\]"),
     lambda m: f"X and y have different numbers of rows ({m.group(1)}); a filter or dropna applied to only "
               "one of them?"),
    (re.compile(r"Expected 2D array, got 1D array instead"),
     lambda m: "scikit-learn wants a 2-D X: use X.reshape(-1, 1) for a single feature or "
               "X.reshape(1, -1) for a single sample"),
]


@interpretation("shape_mismatch")
def shape_mismatch(ctx: Context) -> str | None:
    text = ctx.message
    for pattern, hint in _SHAPE_PATTERNS:
        match = pattern.search(text)
        if match:
            return hint(match)
    return None


_DTYPE_PATTERNS: list[tuple[re.Pattern[str], Callable[[re.Match[str]], str]]] = [
    (re.compile(r"expected (?:scalar type|m1 and m2 to have the same dtype, but got:) (\w+) "
                r"(?:but found|!=) (\w+)"),
     lambda m: f"dtype mismatch: {m.group(1)} meets {m.group(2)}; NumPy arrays are float64 (Double) by default, "
               "convert inputs with .float() / torch.float32 (or the model with .double())"),
    (re.compile(r"mat1 and mat2 must have the same dtype(?:, but got (\w+) and (\w+))?"),
     lambda m: "dtype mismatch in a matrix product"
               + (f" ({m.group(1)} and {m.group(2)})" if m.group(1) else "")
               + ": cast the input to the weights' dtype, e.g. x.float()"),
    (re.compile(r"Found dtype (\w+) but expected (\w+)"),
     lambda m: f"dtype mismatch: the loss got {m.group(1)} targets but expects {m.group(2)}; cast them "
               f"(y.{m.group(2).lower()}()) — CrossEntropyLoss wants class indices as Long"),
    (re.compile(r"Cannot cast ufunc '(\w+)' output from dtype\('(\w+)'\) to dtype\('(\w+)'\)"),
     lambda m: f"dtype mismatch: in-place '{m.group(1)}' would store {m.group(2)} results in a {m.group(3)} "
               f"array; use out = a + b, or create the array as {m.group(2)}"),
]


@interpretation("dtype_mismatch")
def dtype_mismatch(ctx: Context) -> str | None:
    text = ctx.message
    for pattern, hint in _DTYPE_PATTERNS:
        match = pattern.search(text)
        if match:
            return hint(match)
    return None


@interpretation("device_mismatch")
def device_mismatch(ctx: Context) -> str | None:
    text = ctx.message
    both = re.search(r"Expected all tensors to be on the same device, but found at least two devices, (\S+) and "
                     r"(\S+?)!?(?:\s|$)", text)
    if both:
        return (f"Device mismatch: tensors on {both.group(1)} and {both.group(2)}; move the model and every "
                "input to one device (x.to(device))")
    if re.search(r"Input type \(.*\) and weight type \(.*\) should be the same", text):
        return "Device or dtype mismatch between input and weights: move the input with x.to(device, dtype)"
    if "can't convert cuda" in text and "numpy" in text:
        return "A GPU tensor cannot become a NumPy array directly: use t.detach().cpu().numpy()"
    return None


def _nearest(key: str, names: list[str]) -> list[str]:
    close = difflib.get_close_matches(key, names, n=3, cutoff=0.6)
    if not close:
        folded = {name.lower().strip(): name for name in names}
        close = [folded[k] for k in difflib.get_close_matches(key.lower().strip(), list(folded), n=3, cutoff=0.6)]
    return close


def _names(columns: Any) -> list[str] | None:
    try:
        names = [str(name) for name in list(columns)[:10_000]]
    except Exception:
        return None
    return names


def _listing(names: list[str], limit: int = 8) -> str:
    shown = ", ".join(repr(n) for n in names[:limit])
    return shown + (f" … ({len(names)} in all)" if len(names) > limit else "")


def _missing_keys(exc: BaseException) -> list[str]:
    if not exc.args:
        return []
    key = exc.args[0]
    if isinstance(key, str):
        listed = re.match(r"^\"?\[(.*)\] not in index\"?$", key) or re.match(
            r"^\"?None of \[Index\(\[(.*)\], dtype=.*\)\] are in the \[columns\]\"?$", key)
        if listed:
            return re.findall(r"'([^']*)'", listed.group(1))
        return [key]
    if isinstance(key, (int, float, tuple)):
        return [str(key)]
    return []


def _indexes(line: str, variable: str) -> bool:
    """True when the source ``line`` subscripts (or .get/.pop/.loc) the variable ``variable``."""
    return bool(line) and re.search(
        rf"(?<![\w.]){re.escape(variable)}\s*(?:\[|\.(?:get|pop|loc|at|__getitem__)\b)", line) is not None


@interpretation("missing_column")
def missing_column(ctx: Context) -> str | None:
    """A KeyError on a DataFrame (or a dict) of the failing frame: the nearest existing names."""
    if not isinstance(ctx.exc, KeyError):
        return None
    keys = _missing_keys(ctx.exc)
    if not keys:
        return None
    key = keys[0]
    frames = ctx.through("pandas")
    # A dict is only blamed when the failing line indexes it and the key is a string like its
    # keys (not an unrelated local dict, e.g. for a KeyError re-raised with ``raise exc``).
    str_key = isinstance(ctx.exc.args[0], str)
    candidates: list[tuple[str, str, list[str]]] = []  # (kind, variable, names)
    for variable, value in ctx.locals.items():
        columns = getattr(value, "columns", None) if not isinstance(value, type) else None
        if columns is not None and hasattr(value, "__getitem__"):
            names = _names(columns)
            if names is not None and key not in names:
                candidates.append(("DataFrame", variable, names))
        elif isinstance(value, dict) and not frames and value and str_key and _indexes(ctx.line, variable):
            if key not in value and all(isinstance(k, str) for k in value):
                candidates.append(("dict", variable, list(value)))
    if not candidates:
        if frames:
            return f"No column {key!r} in the DataFrame (a KeyError from pandas); check df.columns for its exact name"
        return None
    # The container the failing line indexes first, then the closest name; DataFrames before dicts.
    candidates.sort(key=lambda c: (not _indexes(ctx.line, c[1]), c[0] != "DataFrame", -max(
        (difflib.SequenceMatcher(None, key, n).ratio() for n in c[2][:2000]), default=0.0)))
    kind, variable, names = candidates[0]
    what = "column" if kind == "DataFrame" else "key"
    if not ctx.names:
        return f"No {what} {key!r}: a key/column that does not exist"
    nearest = _nearest(key, names)
    if nearest:
        return f"No {what} {key!r} in {kind} {variable}; nearest: {', '.join(repr(n) for n in nearest)}"
    return f"No {what} {key!r} in {kind} {variable}; it has {_listing(names)}"


def _script_dir(ctx: Context) -> str | None:
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None) or ctx.user_file
    if not path or str(path).startswith("<"):
        return None
    return os.path.dirname(os.path.abspath(path))


@interpretation("file_not_found")
def file_not_found(ctx: Context) -> str | None:
    if not isinstance(ctx.exc, FileNotFoundError):
        return None
    filename = ctx.exc.filename
    if not isinstance(filename, (str, bytes, os.PathLike)):
        return None
    name = os.fsdecode(filename)
    if not os.path.isabs(name):
        hint = f"No file {name!r} relative to the working directory {ctx.cwd}"
        script_dir = _script_dir(ctx)
        if script_dir and os.path.abspath(script_dir) != os.path.abspath(ctx.cwd or "."):
            beside = os.path.join(script_dir, name)
            if os.path.exists(beside):
                return f"{hint}; it exists next to the script ({beside}): build the path from __file__"
    else:
        hint = f"No file {name!r}"
    # The deepest directory that exists, and the nearest names in it.
    path = os.path.abspath(os.path.join(ctx.cwd or ".", name))
    parent = os.path.dirname(path)
    missing = os.path.basename(path)
    while parent and not os.path.isdir(parent):
        missing = os.path.basename(parent)
        parent = os.path.dirname(parent) if os.path.dirname(parent) != parent else ""
    if parent and ctx.names:  # the directory's entries are the user's data
        try:
            entries = os.listdir(parent)[:5000]
        except OSError:
            entries = []
        nearest = _nearest(missing, entries)
        if nearest:
            return f"{hint}; {parent} has {', '.join(repr(n) for n in nearest)}"
        if parent != os.path.dirname(path):
            return f"{hint}; the directory {parent} exists but has no {missing!r}"
    return hint


@interpretation("keyboard_interrupt")
def keyboard_interrupt(ctx: Context) -> str | None:
    if not isinstance(ctx.exc, KeyboardInterrupt):
        return None
    return "Stopped by hand: Ctrl+C in the terminal (SIGINT, KeyboardInterrupt), not a crash"


_SCHEDULERS = (
    ("SLURM_JOB_ID", "Slurm", "the job hit its time limit or was cancelled (scancel); SIGKILL follows after KillWait"),
    ("PBS_JOBID", "PBS", "the job hit its walltime or was deleted (qdel)"),
    ("LSB_JOBID", "LSF", "the job hit its run limit or was killed (bkill)"),
    ("KUBERNETES_SERVICE_HOST", "Kubernetes", "the pod is being deleted, evicted or preempted; SIGKILL follows "
                                              "after the grace period"),
)


@interpretation("sigterm")
def sigterm(ctx: Context) -> str | None:
    from .signals import SignalExit

    if not isinstance(ctx.exc, SignalExit):
        return None
    name = ctx.exc.signal_name
    for variable, scheduler, why in _SCHEDULERS:
        if ctx.environ.get(variable):
            return f"{scheduler} sent {name}: {why}"
    return (f"Asked to stop with {name}: `kill`, a scheduler's time limit, a container stop or a shutdown "
            "(Ctrl+C would be SIGINT; the OOM killer sends SIGKILL, which cannot be caught)")


def _killed_hint(who: str, code: int) -> str | None:
    import signal

    signum = -code if code < 0 else code - 128 if 128 < code < 160 else 0
    if signum == signal.SIGKILL:
        return (f"{who} was killed by SIGKILL (exit {code}): usually the kernel's out-of-memory killer "
                "(see `dmesg`) or a scheduler enforcing its memory/time limit")
    if signum == signal.SIGTERM:
        return f"{who} was stopped by SIGTERM (exit {code}): `kill`, a scheduler's limit or a container stop"
    if hasattr(signal, "SIGSEGV") and signum == signal.SIGSEGV:
        return f"{who} crashed with a segmentation fault (exit {code}): a native library (CUDA, a C extension)"
    return None


@interpretation("killed")
def killed(ctx: Context) -> str | None:
    """SIGKILL cannot be seen by the process it kills, but it can be seen in a child or a pool worker."""
    import subprocess

    text = ctx.message
    if isinstance(ctx.exc, subprocess.CalledProcessError) and isinstance(ctx.exc.returncode, int):
        return _killed_hint("The child process", ctx.exc.returncode)
    if isinstance(ctx.exc, SystemExit) and isinstance(ctx.exc.code, int) and not isinstance(ctx.exc.code, bool):
        return _killed_hint("A child process (passed on by sys.exit)", ctx.exc.code)
    worker = re.search(r"DataLoader worker \(pid\(?s?\)? ?([\d, ]+)\)? is killed by signal: (\w[\w ]*)", text)
    if worker:
        return (f"A DataLoader worker was killed ({worker.group(2).strip()}): out of RAM, most likely; "
                "lower num_workers or the batch size")
    if "BrokenProcessPool" in _type_names(ctx.exc) or "terminated abruptly" in text:
        return "A worker process died abruptly: usually the out-of-memory killer (SIGKILL); use fewer workers"
    return None


# --------------------------------------------------------------------------- entry points


def _context(exc: BaseException, tb: TracebackType | None, names: bool = True) -> Context:
    walked = _walk(tb)
    ctx = Context(exc=exc, tb=tb, files=[f.f_code.co_filename for f, _ in walked], cwd=_cwd(), environ=os.environ,
                  names=names)
    for frame, lineno in reversed(walked):
        if is_user_file(frame.f_code.co_filename):
            ctx.locals = dict(frame.f_locals)
            ctx.user_file = frame.f_code.co_filename
            ctx.line = _source_line(frame.f_code.co_filename, lineno)
            break
    return ctx


def _source_line(filename: str, lineno: int) -> str:
    import linecache

    try:
        return linecache.getline(filename, lineno).strip()
    except Exception:
        return ""


def _cwd() -> str:
    try:
        return os.getcwd()
    except OSError:  # the working directory was deleted
        return "?"


def clip(text: str, limit: int = MAX_HINT) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def interpret(exc: BaseException, tb: TracebackType | None = None, *, names: bool = True) -> str | None:
    """The one-line hint of the first interpretation that recognises ``exc``, or None. With
    ``names=False`` the hint names nothing read from the user's data (keys, columns, files)."""
    if tb is None:
        tb = exc.__traceback__
    try:
        ctx = _context(exc, tb, names)
    except Exception:
        return None
    for _name, func in INTERPRETATIONS:
        try:
            hint = func(ctx)
        except Exception:
            continue
        if hint:
            return clip(hint)
    return None


def diagnose(
    exc: BaseException, tb: TracebackType | None = None, *, frames: bool = True, names: bool = True
) -> dict[str, Any]:
    """``{"hint": ..., "frames": [...]}`` for a crash report; keys without a value are left out.
    ``error_verbosity = "low"`` calls it with ``frames=False, names=False``."""
    if tb is None:
        tb = exc.__traceback__
    out: dict[str, Any] = {}
    hint = interpret(exc, tb, names=names)
    if hint:
        out["hint"] = hint
    if frames:
        try:
            found = user_frames(tb)
        except Exception:
            found = []
        if found:
            out["frames"] = [frame.as_dict() for frame in found]
    return out
