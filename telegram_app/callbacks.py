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
MODELS = "models"  # the /models list, from a help button
JOBS = "jobs"  # the /jobs list, from a help button
KEY_REVOKE = "key:revoke"  # /revoke's confirmation
TRAIN_LOCAL = "train:local"
TRAIN_TARGET = "tt"  # tt:<job>:<column index>
TRAIN_SUGGESTED = "ts"  # ts:<check job>:<index in its suggestions> — "did you mean …?"
TRAIN_TASK = "tk"  # tk:<check job>:<index in its tasks>
TRAIN_KEEP_IDS = "ki"  # ki:<check job> — keep the ID-like columns the check left out
TRAIN_MODEL = "train:model:"  # + auto | lightgbm | random_forest | linear | xgboost
TRAIN_BUDGET = "train:budget:"  # + seconds of the ⭐ Auto search
TRAIN_START = "train:start"
PREDICT_WITH = "pw"  # pw:<train job> — the "Predict with this model" button
PREDICT_PICK = "pp"  # pp:<list_models job>:<index>
PREDICT_EXPLAIN = "predict:explain:"  # + on | off — the why_1..why_3 columns
MODEL_DELETE = "md"  # md:<list_models job>:<index> — asks to confirm
MODEL_DELETE_YES = "mdy"  # mdy:<list_models job>:<index>
MODEL_RENAME = "mr"  # mr:<list_models job>:<index> — asks for the new name
JOB_CANCEL = "jc"  # jc:<job>
JOB_STOP_EARLY = "js"  # js:<train job> — end an ⭐ Auto search now, keeping the best model
WORKER_AUTOSTART = "worker:autostart:"  # + on | off
WORKER_DISCONNECT = "worker:disconnect"
WORKER_DISCONNECT_YES = "worker:disconnect:yes"
PAIR_APPROVE = "pair:"  # + pairing code
KEY_RENAME = "kn"  # kn:<api key id> — asks for the new name
KEY_REVOKE_ONE = "kr"  # kr:<api key id> — asks to confirm
KEY_REVOKE_YES = "kry"  # kry:<api key id>
KEY_ROTATE = "ko"  # ko:<api key id> — asks for the grace period
KEY_ROTATE_GRACE = "kog"  # kog:<api key id>:<grace in seconds> — issues the successor
KEY_NETWORKS = "kw"  # kw:<api key id> — shows the IP allowlist, asks for a new one
KEY_NETWORKS_ANY = "kwa"  # kwa:<api key id> — clears the allowlist (any address)
PROCESS_DISMISS = "pd"  # pd:<tracked process uuid> — a stalled run's "Dismiss" button
PROCESS_STOP = "ps"  # ps:<tracked process uuid> — ⏹ Stop a running run from the chat
PROCESS_PAUSE = "pz"  # pz:<tracked process uuid> — ⏸ Pause (track_progress waits at its next step)
PROCESS_RESUME = "pr"  # pr:<tracked process uuid> — ▶ Resume
PROCESS_ACTION = "pa"  # pa:<tracked process uuid>:<index> — a bot.track(actions=...) button
PROCESS_ALERT = "pf"  # pf:<tracked process uuid> — a failure digest's button: that run's own alert
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
