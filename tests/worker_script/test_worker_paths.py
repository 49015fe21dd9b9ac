"""Path and input safety: nothing is read unless it is a permitted, regular, sane file."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

pytestmark = pytest.mark.skipif(os.name == "nt", reason="POSIX file types and permissions")


def _code(sw, fn, *args):
    with pytest.raises(sw.JobError) as info:
        fn(*args)
    return info.value.code, info.value.message


def _check(sw, raw, root, max_bytes=1024 * 1024):
    return sw.check_input_file(raw, [root], max_bytes)


def test_it_accepts_a_plain_csv_inside_an_allowed_root(sw, data_root):
    f = data_root / "a.csv"
    f.write_text("x,y\n1,2\n")
    assert _check(sw, str(f), data_root) == (f, "csv")


def test_it_rejects_a_file_outside_the_allowed_roots_and_says_how_to_allow_it(sw, data_root, tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    f = outside / "b.csv"
    f.write_text("x\n1\n")
    code, message = _code(sw, _check, sw, str(f), data_root)
    assert code == "path_not_allowed"
    assert str(data_root) in message and f"--allow-dir {os.path.realpath(outside)}" in message


def test_it_rejects_a_sibling_folder_that_shares_the_root_prefix(sw, data_root):
    sibling = data_root.parent / (data_root.name + "-evil")
    sibling.mkdir()
    f = sibling / "c.csv"
    f.write_text("x\n1\n")
    assert _code(sw, _check, sw, str(f), data_root)[0] == "path_not_allowed"


def test_it_rejects_traversal_even_when_it_would_land_inside(sw, data_root):
    (data_root / "sub").mkdir()
    (data_root / "d.csv").write_text("x\n1\n")
    assert _code(sw, _check, sw, str(data_root / "sub" / ".." / "d.csv"), data_root)[0] == "path_not_allowed"


def test_it_rejects_a_symlink_that_escapes_the_root(sw, data_root, tmp_path):
    secret = tmp_path / "secret.csv"
    secret.write_text("password\nhunter2\n")
    link = data_root / "innocent.csv"
    link.symlink_to(secret)
    assert _code(sw, _check, sw, str(link), data_root)[0] == "path_not_allowed"


def test_it_follows_a_symlink_that_stays_inside(sw, data_root):
    target = data_root / "real.csv"
    target.write_text("x\n1\n")
    (data_root / "alias.csv").symlink_to(target)
    assert _check(sw, str(data_root / "alias.csv"), data_root)[0] == target


def test_it_rejects_nul_bytes_and_empty_paths(sw, data_root):
    assert _code(sw, _check, sw, str(data_root / "a\x00.csv"), data_root)[0] == "path_not_allowed"
    assert _code(sw, _check, sw, "", data_root)[0] == "invalid_params"
    assert _code(sw, _check, sw, None, data_root)[0] == "invalid_params"


def test_it_rejects_a_directory(sw, data_root):
    folder = data_root / "folder.csv"
    folder.mkdir()
    assert _code(sw, _check, sw, str(folder), data_root)[0] == "not_a_file"


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_it_rejects_a_fifo_without_blocking_on_it(sw, data_root):
    fifo = data_root / "pipe.csv"
    os.mkfifo(fifo)
    code, message = _code(sw, _check, sw, str(fifo), data_root)
    assert code == "not_a_file" and "pipe" in message


def test_it_rejects_a_missing_file(sw, data_root):
    assert _code(sw, _check, sw, str(data_root / "nope.csv"), data_root)[0] == "file_not_found"


def test_it_rejects_an_empty_file(sw, data_root):
    (data_root / "empty.csv").write_text("")
    assert _code(sw, _check, sw, str(data_root / "empty.csv"), data_root)[0] == "empty_file"


def test_it_rejects_other_extensions(sw, data_root):
    (data_root / "notes.txt").write_text("hello")
    (data_root / "script.py").write_text("print(1)")
    assert _code(sw, _check, sw, str(data_root / "notes.txt"), data_root)[0] == "bad_extension"
    assert _code(sw, _check, sw, str(data_root / "script.py"), data_root)[0] == "bad_extension"


def test_it_rejects_files_over_the_size_limit(sw, data_root):
    (data_root / "big.csv").write_text("x\n" + "1\n" * 1000)
    code, message = _code(sw, sw.check_input_file, str(data_root / "big.csv"), [data_root], 100)
    assert code == "file_too_large" and "--max-file-size" in message


def _as_unprivileged_user(check):
    """``check()`` in a forked child that gave up root (root reads everything); returns what it returns."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: drop to "nobody", run the check, report, and leave without cleanup
        try:
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            answer = check()
        except BaseException as exc:
            answer = f"{type(exc).__name__}: {exc}"
        os.write(write_end, json.dumps(answer).encode())
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        answer = json.loads(pipe.read())
    os.waitpid(pid, 0)
    return answer


def test_it_rejects_an_unreadable_file(sw, data_root):
    if os.geteuid() != 0:
        f = data_root / "locked.csv"
        f.write_text("x\n1\n")
        f.chmod(0)
        assert _code(sw, _check, sw, str(f), data_root)[0] == "unreadable"
        return
    # As root (CI), in a folder the unprivileged child may enter, with a file it may not read.
    root = Path(os.path.realpath(tempfile.mkdtemp(prefix="statsbot-unreadable-")))
    try:
        root.chmod(0o755)
        f = root / "locked.csv"
        f.write_text("x\n1\n")
        f.chmod(0)

        def check() -> str:
            try:
                _check(sw, str(f), root)
            except sw.JobError as error:
                return error.code
            return "accepted"

        assert _as_unprivileged_user(check) == "unreadable"
    finally:
        shutil.rmtree(root)


def test_it_expands_the_home_folder(sw, monkeypatch, data_root):
    monkeypatch.setenv("HOME", str(data_root))
    (data_root / "h.csv").write_text("x\n1\n")
    assert _check(sw, "~/h.csv", data_root)[0] == data_root / "h.csv"


def test_it_checks_the_output_path_too(sw, data_root, tmp_path):
    inp = data_root / "in.csv"
    inp.write_text("x\n1\n")
    assert sw.check_output_path(str(data_root / "out.csv"), [data_root], inp) == data_root / "out.csv"
    assert (
        _code(sw, sw.check_output_path, str(tmp_path / "out.csv"), [data_root], inp)[0] == "path_not_allowed"
    )
    assert _code(sw, sw.check_output_path, str(data_root / "out.txt"), [data_root], inp)[0] == "bad_extension"
    assert _code(sw, sw.check_output_path, str(inp), [data_root], inp)[0] == "invalid_params"


@pytest.mark.parametrize("model_id", ["lightgbm_price_20251130_123456", "a", "A-1.b_c"])
def test_it_accepts_plain_model_ids(sw, model_id):
    assert sw.validate_model_id(model_id) == model_id


@pytest.mark.parametrize(
    "model_id",
    ["", "../x", "..", "a/b", "a\\b", "/etc", ".hidden", "a..b", "x" * 129, None, 5, "a\x00b", "~"],
)
def test_it_rejects_model_ids_that_are_not_plain_names(sw, model_id):
    assert _code(sw, sw.validate_model_id, model_id)[0] == "invalid_model_id"


def test_it_refuses_to_delete_through_a_symlinked_model_folder(sw, tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    victim = tmp_path / "precious"
    victim.mkdir()
    (victim / "keep.txt").write_text("keep")
    (models / "evil").symlink_to(victim)
    with pytest.raises(sw.JobError):
        sw.delete_model(models, "evil")
    assert (victim / "keep.txt").exists()


_segments = st.sampled_from(["..", ".", "", "~", "data", "a.csv", "x\x00", "sub", "%2e%2e", "..."])


@hypothesis_settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(parts=st.lists(_segments, min_size=1, max_size=6), inside=st.booleans())
def test_it_never_resolves_a_path_outside_the_roots(sw, data_root, parts, inside):
    raw = (f"{data_root}/" if inside else "/") + "/".join(parts)
    try:
        resolved = sw.resolve_user_path(raw, [data_root])
    except sw.JobError as exc:
        assert exc.code in ("path_not_allowed", "invalid_params")
    else:
        assert sw.is_within(resolved, data_root)
