"""Models told apart: list_models names the training file, the size and the user's name for a
model; rename_model sets that name in metadata.json and nothing else."""

from __future__ import annotations

import json
import os

import pytest


def _ok(result):
    assert result["success"], result
    return result["data"]


@pytest.fixture
def model_id(sw, run_job, data_root, diabetes_frame):
    path = data_root / "diabetes 2026.csv"
    diabetes_frame.to_csv(path, index=False)
    trained = _ok(run_job(sw.job_train, {"file_path": str(path), "target_column": "target",
                                         "model_type": "linear"})[0])
    return trained["model_id"]


def test_it_lists_the_source_file_name_and_size(sw, run_job, settings, model_id, data_root):
    (listed,) = _ok(run_job(sw.job_list_models, {})[0])["models"]
    folder = settings.models_dir / model_id
    assert listed["source_file"] == "diabetes 2026.csv"
    assert str(data_root) not in json.dumps(listed)  # the name, not where it lives
    assert listed["size_bytes"] == sum(f.stat().st_size for f in folder.iterdir()) > 0
    assert listed["name"] is None


def test_it_renames_a_model_without_touching_its_id_or_model_file(sw, run_job, settings, model_id):
    folder = settings.models_dir / model_id
    model_file = (folder / "model.joblib").read_bytes()
    renamed = _ok(run_job(sw.job_rename_model, {"model_id": model_id, "name": "  Diabetes\tbaseline  "})[0])
    assert renamed == {"model_id": model_id, "name": "Diabetes baseline"}
    (listed,) = _ok(run_job(sw.job_list_models, {})[0])["models"]
    assert (listed["model_id"], listed["name"], listed["refused"]) == (model_id, "Diabetes baseline", None)
    assert (folder / "model.joblib").read_bytes() == model_file
    if os.name == "posix":
        assert oct((folder / "metadata.json").stat().st_mode & 0o777) == "0o600"
    # still loads: the checksum covers the model file, and the name is only metadata
    assert _ok(run_job(sw.job_predict, {"model_id": model_id,
                                        "file_path": str(settings.allowed_roots[0] / "diabetes 2026.csv")})[0])


@pytest.mark.parametrize(
    ("params", "code"),
    [
        ({"model_id": "../data", "name": "x"}, "invalid_model_id"),
        ({"model_id": "nope", "name": "x"}, "model_not_found"),
        ({"name": "x"}, "invalid_model_id"),
        ({"model_id": "MODEL", "name": ""}, "invalid_params"),
        ({"model_id": "MODEL", "name": "x" * 61}, "invalid_params"),
        ({"model_id": "MODEL", "name": "two\x1b[31m"}, "invalid_params"),
        ({"model_id": "MODEL", "name": 5}, "invalid_params"),
    ],
)
def test_it_refuses_bad_renames(sw, run_job, model_id, params, code):
    params = {k: (model_id if v == "MODEL" else v) for k, v in params.items()}
    assert run_job(sw.job_rename_model, params)[0]["error_code"] == code


def test_it_renames_only_folders_it_saved(sw, run_job, settings, model_id):
    stranger = settings.models_dir / "stranger"
    stranger.mkdir()
    (stranger / "metadata.json").write_text(json.dumps({"model_id": "stranger"}))
    assert run_job(sw.job_rename_model, {"model_id": "stranger", "name": "x"})[0]["error_code"] == "model_not_found"
    assert json.loads((stranger / "metadata.json").read_text()) == {"model_id": "stranger"}
