"""experiment_bot.diagnose: the user's own frames, and one test per interpretation of the library."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from experiment_bot import diagnose as dx
from experiment_bot.signals import SignalExit


def caught(func: Any, *args: Any) -> BaseException:
    try:
        func(*args)
    except BaseException as exc:  # noqa: BLE001 - the point is to look at it
        return exc
    raise AssertionError("expected an exception")


def hint_of(exc: BaseException) -> str | None:
    return dx.interpret(exc, exc.__traceback__)


def raiser(exc: BaseException) -> None:
    raise exc


def test_every_interpretation_of_the_library_has_a_test_here() -> None:
    tested = {name.removeprefix("test_it_interprets_") for name in globals() if name.startswith("test_it_interprets_")}
    names = {name for name, _ in dx.INTERPRETATIONS}
    assert names <= {t.split("__")[0] for t in tested}, names - {t.split("__")[0] for t in tested}


# --------------------------------------------------------------------------- frames


def test_it_keeps_only_the_users_frames_with_the_failing_line_last(tmp_path: Path) -> None:
    import json  # the standard library: its frames are not the user's

    def parse() -> Any:
        return json.loads("{broken")  # the failing line of the user's code

    exc = caught(parse)
    frames = dx.user_frames(exc.__traceback__)
    assert [f.function for f in frames] == ["caught", "parse"]
    assert frames[-1].code == 'return json.loads("{broken")  # the failing line of the user\'s code'
    assert frames[-1].file.endswith("test_diagnose.py") and frames[-1].line > 0
    assert all("json" not in f.file for f in frames)


def test_it_treats_site_packages_and_the_client_as_not_the_users() -> None:
    assert not dx.is_user_file("/usr/lib/python3/dist-packages/torch/nn/modules/module.py")
    assert not dx.is_user_file("/home/me/.venv/lib/python3.11/site-packages/pandas/core/frame.py")
    assert not dx.is_user_file(dx.__file__)
    assert not dx.is_user_file(os.__file__)
    assert not dx.is_user_file("<frozen runpy>")
    assert dx.is_user_file("/home/me/project/train.py")
    assert dx.is_user_file("<string>")


def test_it_diagnoses_without_frames_when_asked_and_never_raises() -> None:
    exc = caught(raiser, KeyboardInterrupt())
    assert set(dx.diagnose(exc, frames=False)) == {"hint"}
    assert dx.diagnose(caught(raiser, ValueError("nothing known"))).keys() == {"frames"}


# --------------------------------------------------------------------------- one per interpretation


class OutOfMemoryError(RuntimeError):
    """Stands in for torch.cuda.OutOfMemoryError (same name, same message)."""


def test_it_interprets_cuda_out_of_memory() -> None:
    exc = caught(raiser, OutOfMemoryError(
        "CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 15.77 GiB of which "
        "1.12 GiB is free. Including non-PyTorch memory, this process has 14.6 GiB memory in use."))
    hint = hint_of(exc)
    assert hint is not None and hint.startswith("GPU out of memory (tried to allocate 2.00 GiB; GPU 0: 1.12 GiB free")
    assert "batch size" in hint


def test_it_interprets_cpu_out_of_memory() -> None:
    np = pytest.importorskip("numpy")
    exc = caught(np.empty, (10**7, 10**7))  # 800 TB: refused at once, nothing is allocated
    hint = hint_of(exc)
    assert hint is not None and hint.startswith("Out of RAM: tried to allocate")
    assert "float64 array of shape (10000000, 10000000)" in hint and "GiB of RAM" in hint
    assert hint_of(caught(raiser, MemoryError())).startswith("Out of RAM: an allocation failed")


def test_it_interprets_shape_mismatch() -> None:
    np = pytest.importorskip("numpy")
    assert "shapes (3,) and (4,)" in hint_of(caught(lambda: np.ones(3) + np.ones(4)))
    torch_like = caught(raiser, RuntimeError("mat1 and mat2 shapes cannot be multiplied (32x512 and 256x10)"))
    assert hint_of(torch_like) == ("Shape mismatch: the input has 512 features but the layer expects 256 "
                                   "(32x512 @ 256x10); fix the layer's in_features or the input's flattening")
    sklearn_like = caught(raiser, ValueError("Found input variables with inconsistent numbers of samples: [100, 99]"))
    assert hint_of(sklearn_like).startswith("X and y have different numbers of rows (100, 99)")


def test_it_interprets_dtype_mismatch() -> None:
    exc = caught(raiser, RuntimeError("expected scalar type Float but found Double"))
    assert hint_of(exc).startswith("dtype mismatch: Float meets Double; NumPy arrays are float64")
    loss = caught(raiser, RuntimeError("Found dtype Long but expected Float"))
    assert "(y.float())" in hint_of(loss)


def test_it_interprets_device_mismatch() -> None:
    exc = caught(raiser, RuntimeError("Expected all tensors to be on the same device, but found at least two "
                                      "devices, cuda:0 and cpu! (when checking argument for argument mat1)"))
    assert hint_of(exc) == ("Device mismatch: tensors on cuda:0 and cpu; move the model and every input to one "
                            "device (x.to(device))")


def test_it_interprets_missing_column__with_the_dataframes_nearest_names() -> None:
    pd = pytest.importorskip("pandas")

    def select() -> Any:
        train = pd.DataFrame({"label": [1], "labels": [0], "feature_1": [0.5]})
        return train["lable"]

    exc = caught(select)
    assert hint_of(exc) == "No column 'lable' in DataFrame train; nearest: 'label', 'labels'"


def test_it_interprets_missing_column__listing_the_columns_when_none_is_near() -> None:
    pd = pytest.importorskip("pandas")

    def select() -> Any:
        df = pd.DataFrame({"a": [1], "b": [2]})
        return df[["a", "zzz"]]

    assert hint_of(caught(select)) == "No column 'zzz' in DataFrame df; it has 'a', 'b'"


def test_it_interprets_missing_column__of_a_dict_without_pandas() -> None:
    def lookup() -> Any:
        config = {"learning_rate": 0.1, "batch_size": 32}
        return config["batchsize"]

    assert hint_of(caught(lookup)) == "No key 'batchsize' in dict config; nearest: 'batch_size'"


def test_it_interprets_file_not_found__naming_the_working_directory(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.csv.gz").write_text("")
    exc = caught(open, "data/train.csv")
    assert hint_of(exc) == (f"No file 'data/train.csv' relative to the working directory {tmp_path}; "
                            f"{tmp_path / 'data'} has 'train.csv.gz'")
    missing_dir = caught(open, "results/run1/out.txt")
    assert hint_of(missing_dir) == (f"No file 'results/run1/out.txt' relative to the working directory {tmp_path}; "
                                    f"the directory {tmp_path} exists but has no 'results'")


def test_it_interprets_file_not_found__that_exists_next_to_the_script(tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (project / "config.yaml").write_text("lr: 1")
    script = project / "train.py"
    script.write_text("import sys\nsys.path.insert(0, sys.argv[1])\nfrom experiment_bot.diagnose import interpret\n"
                      "try:\n    open('config.yaml')\nexcept OSError as exc:\n    print(interpret(exc))\n")
    client = Path(dx.__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, str(script), str(client)], cwd=tmp_path, capture_output=True, text=True,
                         timeout=30, check=True).stdout.strip()
    assert out == (f"No file 'config.yaml' relative to the working directory {tmp_path}; it exists next to the "
                   f"script ({project / 'config.yaml'}): build the path from __file__")


def test_it_interprets_keyboard_interrupt() -> None:
    assert hint_of(caught(raiser, KeyboardInterrupt())).startswith("Stopped by hand: Ctrl+C in the terminal (SIGINT")


def test_it_interprets_sigterm__sent_by_a_scheduler(monkeypatch) -> None:
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    exc = caught(raiser, SignalExit(signal.SIGTERM))
    assert hint_of(exc) == ("Slurm sent SIGTERM: the job hit its time limit or was cancelled (scancel); SIGKILL "
                            "follows after KillWait")


def test_it_interprets_sigterm__from_anywhere_else(monkeypatch) -> None:
    for name in ("SLURM_JOB_ID", "PBS_JOBID", "LSB_JOBID", "KUBERNETES_SERVICE_HOST"):
        monkeypatch.delenv(name, raising=False)
    hint = hint_of(caught(raiser, SignalExit(signal.SIGTERM)))
    assert hint.startswith("Asked to stop with SIGTERM: `kill`, a scheduler's time limit")
    assert "SIGKILL, which cannot be caught" in hint


def test_it_interprets_killed__a_child_killed_by_sigkill() -> None:
    exc = caught(subprocess.check_call,
                 [sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"])
    assert hint_of(exc) == ("The child process was killed by SIGKILL (exit -9): usually the kernel's "
                            "out-of-memory killer (see `dmesg`) or a scheduler enforcing its memory/time limit")
    loader = caught(raiser, RuntimeError("DataLoader worker (pid 1234) is killed by signal: Killed. "))
    assert hint_of(loader).startswith("A DataLoader worker was killed (Killed): out of RAM")


def test_it_leaves_an_exception_it_does_not_know_without_a_hint() -> None:
    assert hint_of(caught(raiser, ValueError("learning rate must be positive"))) is None
    assert hint_of(caught(raiser, SystemExit(1))) is None


def test_it_names_no_keys_of_a_dict_the_failing_line_did_not_index() -> None:
    def reraise() -> Any:
        d = {"a": 1, "b": 2, "('a', 'b')x": 3}  # noqa: F841 - an unrelated dict in scope
        try:
            {}[("a", "b")]
        except KeyError as exc:
            raise exc

    assert hint_of(caught(reraise)) is None  # not "No key ... in dict d; nearest: ..."


def test_it_names_nothing_from_the_users_data_without_names(tmp_path: Path, monkeypatch) -> None:
    def lookup() -> Any:
        config = {"learning_rate": 0.1, "batch_size": 32}
        return config["batchsize"]

    exc = caught(lookup)
    assert dx.interpret(exc, names=False) == "No key 'batchsize': a key/column that does not exist"
    assert dx.diagnose(exc, frames=False, names=False) == {
        "hint": "No key 'batchsize': a key/column that does not exist"}
    monkeypatch.chdir(tmp_path)
    (tmp_path / "train.csv.gz").write_text("")
    assert dx.interpret(caught(open, "train.csv"), names=False) == (
        f"No file 'train.csv' relative to the working directory {tmp_path}")
