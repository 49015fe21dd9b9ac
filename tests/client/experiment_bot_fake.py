"""An in-test stand-in for the StatsBot notification API (docs/notify-api.md).

It records every attempt, honours ``Idempotency-Key`` the way the contract says, and can be
told to fail: answer with a status for the next N calls of a path, process a request and
then fail anyway (the response is "lost"), or not listen at all (server down).

``POST /api/notify/batch`` answers each item as ``POST /api/notify`` would (with the item's
``idempotency_key``), and records each accepted item as if it had come alone, so
``bodies("/api/notify")`` lists every notification whichever form carried it.
``batch_form = False`` makes it an older server without the batch form (404).
``refuse_item(predicate, status)`` answers items the predicate picks with that status.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections import deque
from collections.abc import Callable
from email.parser import BytesParser
from email.policy import default as default_policy
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any


class Recorded:
    """One HTTP request as the server saw it."""

    def __init__(self, method: str, target: str, headers: dict[str, str], body: Any, files: dict[str, Any]):
        self.method = method
        self.path, _, self.query = target.partition("?")
        self.headers = headers
        self.json = body
        self.files = files
        self.raw = b""  # the body as received
        self.at = time.monotonic()

    def __repr__(self) -> str:
        return f"<{self.method} {self.path} {self.json!r}>"


class Action:
    def __init__(
        self,
        status: int,
        body: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        process_first: bool = False,
    ) -> None:
        self.status = status
        self.body = body or {"error": {"code": f"http_{status}", "message": "scripted failure"}}
        self.headers = headers or {}
        self.process_first = process_first


class FakeServer:
    def __init__(self, port: int = 0) -> None:
        self.port = port
        self.cond = threading.Condition()
        self.attempts: list[Recorded] = []  # every request received
        self.accepted: list[Recorded] = []  # requests that created something (first of each key)
        self.processes: dict[str, dict[str, Any]] = {}
        self.commands: dict[str, dict[str, Any]] = {}  # what the chat asks of each process
        self.idempotency: dict[str, tuple[int, dict[str, Any]]] = {}
        self.scripted: dict[str, deque[Action]] = {}
        self.always: Action | None = None
        self.valid_keys: set[str] | None = None
        self.expired_keys: set[str] = set()  # answered 401 key_expired (rotated, grace period over)
        self.address_refused_keys: set[str] = set()  # answered 403 ip_not_allowed (an IP allowlist)
        self.pairings: dict[str, dict[str, Any]] = {}
        self.pairing_interval = 0.01
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._message_ids = 0
        self.batch_form = True
        self.item_failures: list[tuple[Callable[[dict[str, Any]], bool], int, str]] = []

    # ------------------------------------------------------------------ control

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FakeServer:
        server = self

        class Handler(_Handler):
            fake = server

        httpd = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        httpd.daemon_threads = True
        self.port = httpd.server_address[1]
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def fail_next(self, path: str, status: int, times: int = 1, **kwargs: Any) -> None:
        with self.cond:
            queue = self.scripted.setdefault(path, deque())
            for _ in range(times):
                queue.append(Action(status, **kwargs))

    def refuse_item(self, predicate: Callable[[dict[str, Any]], bool], status: int, code: str = "") -> None:
        """Answer ``status`` to every notify item (in a batch) for which ``predicate(body)`` holds."""
        with self.cond:
            self.item_failures.append((predicate, status, code or f"http_{status}"))

    def command(self, uuid: str, control: str | None = None, actions: list[str] = ()) -> None:
        """What the chat asks of process ``uuid``: answered to its next heartbeats, as the server does
        (``control`` stays until changed; ``actions`` are handed over once)."""
        with self.cond:
            wanted = self.commands.setdefault(uuid, {"control": "run", "actions": []})
            if control is not None:
                wanted["control"] = control
            wanted["actions"] = [*wanted["actions"], *actions]

    def batches(self) -> list[Recorded]:
        with self.cond:
            return [r for r in self.attempts if r.path == "/api/notify/batch"]

    def notify_texts(self) -> list[str]:
        """The texts of every notification accepted, in order of arrival."""
        return [body["text"] for body in self.bodies("/api/notify")]

    def add_pairing(self, code: str, key: str, pending_polls: int = 2, expired: bool = False) -> None:
        self.pairings[code] = {"key": key, "pending": pending_polls, "expired": expired, "used": False}

    def wait_for(self, predicate: Callable[[], Any], timeout: float = 10.0) -> Any:
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                value = predicate()
                if value:
                    return value
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"timed out waiting; received so far: {self.attempts!r}")
                self.cond.wait(remaining)

    # ------------------------------------------------------------------ views

    def bodies(self, path: str) -> list[Any]:
        with self.cond:
            return [r.json for r in self.accepted if r.path == path]

    def heartbeats(self, uuid: str) -> list[dict[str, Any]]:
        return [b for b in self.bodies("/api/heartbeat") if b["uuid"] == uuid]

    def started(self) -> list[dict[str, Any]]:
        return self.bodies("/api/processes/start")

    def finished(self) -> list[dict[str, Any]]:
        return self.bodies("/api/processes/finish")

    def finish_of(self, uuid: str) -> dict[str, Any] | None:
        for body in self.finished():
            if body["uuid"] == uuid:
                return body
        return None

    # ------------------------------------------------------------------ behaviour (called by the handler)

    def handle(self, request: Recorded) -> tuple[int, dict[str, Any], dict[str, str]]:
        with self.cond:
            self.attempts.append(request)
            self.cond.notify_all()
            action = self.always
            queue = self.scripted.get(request.path)
            if queue:
                action = queue.popleft()
            if action is not None and not action.process_first:
                return action.status, action.body, action.headers
            result = self._process(request)
            self.cond.notify_all()
            if action is not None:
                return action.status, action.body, action.headers
            return result[0], result[1], {}

    def _process(self, request: Recorded) -> tuple[int, dict[str, Any]]:
        path = request.path
        if path == "/api/register" and request.method == "POST":
            code = next(iter(self.pairings), "NOCODE")
            return 201, {
                "code": code,
                "link": f"https://t.me/statsbot_test_bot?start=pair_{code}",
                "poll_url": f"{self.url}/api/register/{code}?secret=pair_secret_{code}",
                "expires_in": 600,
                "interval": self.pairing_interval,
            }
        match = re.fullmatch(r"/api/register/(\w+)", path)
        if match and request.method == "GET":
            pairing = self.pairings.get(match.group(1))
            if pairing is None or pairing["used"]:
                return 404, {"error": {"code": "not_found", "message": "unknown code"}}
            if request.query != f"secret=pair_secret_{match.group(1)}":
                return 403, {"error": {"code": "wrong_secret", "message": "wrong secret"}}
            if pairing["expired"]:
                return 410, {"error": {"code": "expired", "message": "expired"}}
            if pairing["pending"] > 0:
                pairing["pending"] -= 1
                return 200, {"status": "pending"}
            pairing["used"] = True
            return 200, {"status": "confirmed", "api_key": pairing["key"]}

        auth = request.headers.get("authorization", "")
        key = auth[len("Bearer ") :] if auth.startswith("Bearer ") else ""
        if not key or (self.valid_keys is not None and key not in self.valid_keys):
            return 401, {"error": {"code": "invalid_key", "message": "missing or revoked key"}}
        if key in self.expired_keys:
            return 401, {"error": {"code": "key_expired", "message": "this key expired: it was replaced"}}
        if key in self.address_refused_keys:
            return 403, {"error": {"code": "ip_not_allowed", "message": "this request came from 127.0.0.1"}}
        if path == "/api/validate" and request.method == "GET":
            return 200, {
                "valid": True,
                "key_prefix": key[:8],
                "account": {"telegram_user_id": 1, "username": "ann"},
            }

        if path == "/api/notify/batch" and request.method == "POST":
            if not self.batch_form:
                return 404, {"error": {"code": "not_found", "message": path}}
            return self._batch(request, key)

        idem = request.headers.get("idempotency-key")
        if idem and (key, idem) in self.idempotency:
            return self.idempotency[(key, idem)]
        status, body = self._create(request)
        if idem:
            self.idempotency[(key, idem)] = (status, body)
        return status, body

    def _batch(self, request: Recorded, key: str) -> tuple[int, dict[str, Any]]:
        body = request.json
        items = body.get("messages") if isinstance(body, dict) else None
        if not isinstance(items, list) or not items:
            return 400, {"error": {"code": "invalid_input", "message": "'messages' must be a non-empty list"}}
        if len(items) > 100:
            return 413, {"error": {"code": "too_many_messages", "message": "at most 100 messages"}}
        results: list[dict[str, Any]] = []

        def error(status: int, code: str, message: str) -> dict[str, Any]:
            return {"status": status, "body": {"error": {"code": code, "message": message}}}

        for item in items:
            if not isinstance(item, dict):
                results.append(error(400, "invalid_input", "each message must be an object"))
                continue
            refusal = next(((s, c) for p, s, c in self.item_failures if p(item)), None)
            if refusal is not None:
                results.append(error(refusal[0], refusal[1], "scripted"))
                continue
            idem = item.get("idempotency_key")
            fields = {name: value for name, value in item.items() if name != "idempotency_key"}
            single = Recorded("POST", "/api/notify", {**request.headers, "idempotency-key": idem or ""}, fields, {})
            if idem and (key, idem) in self.idempotency:
                status, answer = self.idempotency[(key, idem)]
                results.append({"status": status, "body": answer, "replayed": True})
                continue
            status, answer = self._create(single)
            if idem and status < 400:
                self.idempotency[(key, idem)] = (status, answer)
            results.append({"status": status, "body": answer})
        queued = sum(1 for r in results if r["status"] == 202)
        return 200, {"results": results, "queued": queued, "rejected": len(results) - queued}

    def _create(self, request: Recorded) -> tuple[int, dict[str, Any]]:
        path, body = request.path, request.json
        if not isinstance(body, dict):
            return 400, {"error": {"code": "bad_request", "message": "JSON object expected"}}
        problem = _contract_problem(path, body)
        if problem:
            return 400, {"error": {"code": "invalid_input", "message": problem}}
        if path == "/api/notify":
            self._message_ids += 1
            self.accepted.append(request)
            return 202, {"message_id": self._message_ids, "status": "queued"}
        if path == "/api/processes/start":
            existed = body["uuid"] in self.processes
            self.processes.setdefault(body["uuid"], {"state": "running"})
            self.accepted.append(request)
            return (200 if existed else 201), {"uuid": body["uuid"], "state": "running"}
        if path in ("/api/heartbeat", "/api/processes/finish"):
            process = self.processes.get(body.get("uuid"))
            if process is None:
                return 404, {"error": {"code": "unknown_process", "message": "start it first"}}
            if path.endswith("finish"):
                process["state"] = body["status"]
                self.accepted.append(request)
                return 200, {"state": process["state"]}
            self.accepted.append(request)
            wanted = self.commands.setdefault(body["uuid"], {"control": "run", "actions": []})
            taps, wanted["actions"] = wanted["actions"], []
            return 200, {"state": process["state"], "control": wanted["control"], "actions": taps}
        return 404, {"error": {"code": "not_found", "message": path}}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _contract_problem(path: str, body: dict[str, Any]) -> str | None:
    """The type checks docs/notify-api.md implies, so a client bug shows up as a 400 here too."""
    import uuid

    def is_uuid(value: Any) -> bool:
        try:
            uuid.UUID(str(value))
        except ValueError:
            return False
        return isinstance(value, str)

    if path == "/api/notify":
        if not isinstance(body.get("text"), str) or len(body["text"]) > 65_536:
            return "'text' must be a string of at most 65536 characters"
        if body.get("process_id") is not None and not is_uuid(body["process_id"]):
            return "'process_id' must be a UUID"
        return None
    if not is_uuid(body.get("uuid")):
        return "'uuid' is required"
    if path == "/api/processes/start":
        if not isinstance(body.get("name"), str) or not body["name"].strip() or len(body["name"]) > 200:
            return "'name' must be a non-empty string of at most 200 characters"
        if body.get("parent_uuid") is not None and not is_uuid(body["parent_uuid"]):
            return "'parent_uuid' must be a UUID"
        if not isinstance(body.get("tags", []), list) or len(body.get("tags", [])) > 32:
            return "'tags' must be a list of at most 32 strings"
        if body.get("heartbeat_interval") is not None and not _is_number(body["heartbeat_interval"]):
            return "'heartbeat_interval' must be a number"
    metrics = body.get("metrics") or {}
    if not isinstance(metrics, dict) or len(metrics) > 100:
        return "'metrics' must be an object of at most 100 numbers"
    if any(value is not None and not _is_number(value) for value in metrics.values()):
        return "metric values must be numbers"
    if body.get("step") is not None and not _is_number(body["step"]):
        return "'step' must be a number"
    progress = body.get("progress")
    if progress is not None and not (isinstance(progress, dict) and isinstance(progress.get("done"), int)):
        return "'progress' must be {done, total}"
    if path == "/api/processes/finish" and body.get("status") not in ("succeeded", "failed", "cancelled"):
        return "'status' must be succeeded, failed or cancelled"
    return None


class _Handler(BaseHTTPRequestHandler):
    fake: FakeServer

    def log_message(self, format: str, *args: Any) -> None:  # silence the default stderr logging
        pass

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def _serve(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        headers = {k.lower(): v for k, v in self.headers.items()}
        body: Any = None
        files: dict[str, Any] = {}
        content_type = headers.get("content-type", "")
        if content_type.startswith("application/json"):
            body = json.loads(raw)
        elif content_type.startswith("multipart/form-data"):
            message = BytesParser(policy=default_policy).parsebytes(
                b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + raw
            )
            for part in message.iter_parts():
                name = part.get_param("name", header="content-disposition")
                data = part.get_payload(decode=True)
                if name == "payload":
                    body = json.loads(data)
                else:
                    files[name] = {
                        "filename": part.get_filename(),
                        "content": data,
                        "content_type": part.get_content_type(),
                    }
        recorded = Recorded(method, self.path, headers, body, files)
        recorded.raw = raw
        status, answer, extra_headers = self.fake.handle(recorded)
        payload = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        for name, value in extra_headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)


# --------------------------------------------------------------------------- test helpers

CLIENT_DIR = Path(__file__).resolve().parents[2] / "client"
TEST_KEY = "exp_TestKey1234567890"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def script_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for a subprocess that imports experiment_bot from client/."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EXPERIMENT_BOT_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(CLIENT_DIR), env.get("PYTHONPATH", "")]))
    env.update(extra or {})
    return env


def write_script(tmp_path: Path, code: str, name: str = "script.py") -> Path:
    script = tmp_path / name
    script.write_text(textwrap.dedent(code))
    return script


def run_script(
    tmp_path: Path, code: str, env: dict[str, str] | None = None, timeout: float = 20.0
) -> subprocess.CompletedProcess[str]:
    script = write_script(tmp_path, code)
    return subprocess.run(
        [sys.executable, str(script)],
        env=script_env(env),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
