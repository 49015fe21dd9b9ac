"""Inline-button callback data: one place for every prefix, each under Telegram's 64 bytes.

Buttons that refer to a job's result carry the job id, so they work after a restart and
in any conversation state: the handler reads the result from the database.
"""

from __future__ import annotations

import re

CONNECT = "connect"
CONNECT_REPLACE = "connect:replace"
NEW_KEY = "key:new"
HELP = "help"
TRAIN_LOCAL = "train:local"
TRAIN_TARGET = "tt"  # tt:<job>:<column index>
TRAIN_TASK = "train:task:"  # + classification | regression
TRAIN_MODEL = "train:model:"  # + lightgbm | random_forest | linear | xgboost
TRAIN_START = "train:start"
PREDICT_WITH = "pw"  # pw:<train job> — the "Predict with this model" button
PREDICT_PICK = "pp"  # pp:<list_models job>:<index>
MODEL_DELETE = "md"  # md:<list_models job>:<index> — asks to confirm
MODEL_DELETE_YES = "mdy"  # mdy:<list_models job>:<index>
JOB_CANCEL = "jc"  # jc:<job>
WORKER_AUTOSTART = "worker:autostart:"  # + on | off
WORKER_DISCONNECT = "worker:disconnect"
WORKER_DISCONNECT_YES = "worker:disconnect:yes"
PAIR_APPROVE = "pair:"  # + pairing code
CANCEL = "cancel"

_JOB_REF = re.compile(r"^(?P<prefix>[a-z]+):(?P<job>[0-9a-f-]{36})(?::(?P<index>\d{1,4}))?$")


def job_ref(prefix: str, job_id: object, index: int | None = None) -> str:
    data = f"{prefix}:{job_id}" + (f":{index}" if index is not None else "")
    assert len(data.encode()) <= 64, data
    return data


def parse_job_ref(data: str | None) -> tuple[str, str, int | None]:
    match = _JOB_REF.match(data or "")
    if not match:
        raise ValueError(f"not a job reference: {data!r}")
    index = match.group("index")
    return match.group("prefix"), match.group("job"), int(index) if index is not None else None


def pattern(prefix: str) -> str:
    """A CallbackQueryHandler pattern for job references with ``prefix``."""
    return rf"^{prefix}:[0-9a-f-]{{36}}(:\d{{1,4}})?$"
