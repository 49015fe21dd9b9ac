"""The OpenAPI 3.1 description of the notify API, written by hand and served at ``/api/openapi.json``.

Kept in step with ``notifications/urls.py`` and the parsers in ``notifications/api/validation.py``
by tests: every route is described, every description has a route, and every example request
passes the server's own input checks.
"""

from __future__ import annotations

import copy
from typing import Any

EXAMPLE_UUID = "6f1c2a9e-3b7d-4c55-9e0a-2d8f41b7c913"
PARENT_UUID = "0b9e6d3c-8a41-4f2e-b7c5-1e2d3f4a5b6c"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref("Error")}}}


def _json_body(schema: str, example: dict[str, Any], *, required: bool = True) -> dict[str, Any]:
    return {"required": required, "content": {"application/json": {"schema": _ref(schema), "example": example}}}


def _ok(description: str, schema: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref(schema)}}}


IDEMPOTENCY_KEY = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "description": "Any unique string (a UUID). A retry with the same key and API key returns the first "
                   "successful answer (with `Idempotent-Replayed: true`) and creates nothing new. "
                   "Refused requests (4xx) are not stored. The same key with a different request body "
                   "is refused with 422 `idempotency_key_mismatch`.",
    "schema": {"type": "string", "minLength": 1, "maxLength": 128},
}

RATE_LIMITED = {
    "description": "Rate limited: 30 requests per 10 s, 600 per hour, per key (a refused request does not "
                   "count); or too many unknown keys from this client address (30 per 10 minutes).",
    "headers": {"Retry-After": {"description": "Seconds until the window ends.", "schema": {"type": "integer"}}},
    "content": {"application/json": {"schema": _ref("Error")}},
}

NOTIFY_RATE_LIMITED = {
    "description": "Rate limited: 30 requests per 10 s and 600 per hour per key (a batch is one request), "
                   "and for notifications 600 messages and 32 MiB per minute per key. Nothing was queued; "
                   "retry after `Retry-After` seconds.",
    "headers": RATE_LIMITED["headers"],
    "content": RATE_LIMITED["content"],
}

KEYED_ERRORS = {
    "400": _error("Invalid input; the message names the field. Also `invalid_json`: not JSON, a number of "
                  "more than 64 digits or not finite, or nesting deeper than 64 levels."),
    "401": _error("Missing, invalid, revoked or expired key (`missing_key`, `invalid_key`, `revoked_key`, "
                  "`key_expired`: a rotated key after its grace period; the message names its successor's "
                  "prefix — put the new key in `EXPERIMENT_BOT_KEY` or pair again)."),
    "403": _error("`ip_not_allowed`: the key has an IP allowlist (CIDR networks, set in /status or the admin) "
                  "and the request came from another address; the message names the address the server saw."),
    "405": _error("Wrong method; see the `Allow` header."),
    "413": _error("Body over 256 KiB (JSON) or file over 10 MiB, or a multipart body with too many parts "
                  "(`too_many_parts`)."),
    "415": _error("Wrong Content-Type."),
    "422": _error("`Idempotency-Key` already used with a different request body (`idempotency_key_mismatch`)."),
    "429": RATE_LIMITED,
}

NULLABLE_UUID = {"type": ["string", "null"], "format": "uuid"}
METRICS = {
    "type": "object",
    "maxProperties": 100,
    "additionalProperties": {"type": ["number", "null"]},
    "description": "Metric name → number. `null` values (NaN/inf) are dropped.",
}

SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message"],
                "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
            }
        },
    },
    "RegisterRequest": {
        "type": "object",
        "properties": {
            "hostname": {"type": "string", "maxLength": 255},
            "label": {"type": "string", "maxLength": 255},
        },
    },
    "RegisterResponse": {
        "type": "object",
        "required": ["code", "link", "poll_url", "expires_in", "interval"],
        "properties": {
            "code": {"type": "string"},
            "link": {"type": "string", "description": "https://t.me/<bot>?start=pair_<code>: the user taps it."},
            "poll_url": {"type": "string", "description": "Poll exactly this URL; its secret claims the key."},
            "expires_in": {"type": "integer", "description": "Seconds."},
            "interval": {"type": "integer", "description": "Seconds between polls."},
        },
    },
    "PollResponse": {
        "type": "object",
        "required": ["status"],
        "properties": {
            "status": {"enum": ["pending", "confirmed"]},
            "api_key": {"type": "string", "description": "Only with `confirmed`, and only once."},
        },
    },
    "ValidateResponse": {
        "type": "object",
        "required": ["valid", "key_prefix", "account"],
        "properties": {
            "valid": {"const": True},
            "key_prefix": {"type": "string"},
            "expires_at": {"type": ["string", "null"], "format": "date-time",
                           "description": "Set once the key was rotated: it stops working then (grace period)."},
            "replaced_by_prefix": {"type": ["string", "null"],
                                   "description": "The prefix of the key that replaced this one."},
            "allowed_networks": {"type": "array", "items": {"type": "string"},
                                 "description": "CIDR networks this key is accepted from; empty: any address."},
            "account": {
                "type": "object",
                "properties": {
                    "telegram_user_id": {"type": "integer"},
                    "username": {"type": "string"},
                    "first_name": {"type": "string"},
                },
            },
        },
    },
    "NotifyRequest": {
        "type": "object",
        "required": ["text"],
        "properties": {
            "text": {"type": "string", "maxLength": 65536,
                     "description": "Required unless a file is sent. Longer than a Telegram message: "
                                    "shortened, with the full text attached."},
            "level": {"enum": ["info", "success", "warning", "error"], "default": "info"},
            "format": {
                "enum": ["text", "markdown", "html"],
                "default": "text",
                "description": "`text`: shown as is. `markdown`: **bold**, *italic*/_italic_, ~~strike~~, "
                               "`code`, ```pre```, [links](https://…) and # headings become formatting, all "
                               "else is shown literally. `html`: Telegram's tags (b, i, u, s, code, pre, a, "
                               "blockquote, tg-spoiler) are kept, `<br>` becomes a line break, any other tag "
                               "is shown as text.",
            },
            "process_id": {**NULLABLE_UUID, "description": "Links the message to a tracked process."},
            "metadata": {"type": ["object", "null"],
                         "description": "host, script, python, env, git {commit, dirty}, …"},
            "group": {"type": ["string", "null"], "maxLength": 64, "pattern": "^[A-Za-z0-9_.:-]*$",
                      "description": "Messages of the same group edit one chat message (the client's "
                                     "`bot.catch()` counts a repeating error this way)."},
        },
    },
    "NotifyMultipart": {
        "type": "object",
        "properties": {
            "payload": {"type": "string", "contentMediaType": "application/json",
                        "description": "The NotifyRequest as JSON (`text` optional here)."},
            "file": {"type": "string", "contentMediaType": "application/octet-stream",
                     "description": "At most 10 MiB. PNG, JPEG, GIF and WebP (by content) are sent as "
                                    "photos, anything else as a document."},
        },
        "required": ["file"],
    },
    "NotifyResponse": {
        "type": "object",
        "required": ["message_id", "status"],
        "properties": {"message_id": {"type": "integer"}, "status": {"const": "queued"}},
    },
    "NotifyBatchRequest": {
        "type": "object",
        "required": ["messages"],
        "properties": {
            "messages": {
                "type": "array",
                "minItems": 1,
                "maxItems": 100,
                "items": _ref("NotifyBatchItem"),
                "description": "At most 100 messages, and the whole body at most 256 KiB.",
            },
        },
    },
    "NotifyBatchItem": {
        "allOf": [_ref("NotifyRequest")],
        "properties": {
            "idempotency_key": {
                "type": ["string", "null"], "minLength": 1, "maxLength": 128,
                "description": "This message's own `Idempotency-Key` (1-128 visible ASCII characters, a UUID "
                               "is ideal), shared with the single form: a message first sent alone with this "
                               "key, or in an earlier batch, is answered again (`replayed`), not queued twice.",
            },
        },
    },
    "NotifyBatchResponse": {
        "type": "object",
        "required": ["results", "queued", "rejected"],
        "properties": {
            "results": {"type": "array", "items": _ref("NotifyBatchResult"),
                        "description": "One per message, in the order sent."},
            "queued": {"type": "integer", "description": "Results with status 202 (replays included)."},
            "rejected": {"type": "integer", "description": "The other results."},
        },
    },
    "NotifyBatchResult": {
        "type": "object",
        "required": ["status", "body"],
        "description": "What `POST /api/notify` would have answered this message alone.",
        "properties": {
            "status": {"type": "integer", "description": "202 queued; 400 invalid (`body.error` names the "
                                                        "field); 409 its idempotency key is in use "
                                                        "(`request_in_progress`: retry it) or belongs to "
                                                        "another endpoint."},
            "body": {"oneOf": [_ref("NotifyResponse"), _ref("Error")]},
            "replayed": {"type": "boolean", "description": "Present (true) when its idempotency key was "
                                                           "seen before: the first answer, nothing new queued."},
        },
    },
    "StartRequest": {
        "type": "object",
        "required": ["uuid", "name"],
        "properties": {
            "uuid": {"type": "string", "format": "uuid"},
            "name": {"type": "string", "minLength": 1, "maxLength": 200},
            "tags": {"type": "array", "maxItems": 32, "items": {"type": "string", "maxLength": 64}},
            "parent_uuid": {**NULLABLE_UUID, "description": "A process of the same account; unknown ones "
                                                            "are ignored."},
            "heartbeat_interval": {"type": "number", "minimum": 0, "maximum": 86400, "default": 60,
                                   "description": "Seconds; 0 turns stall detection off."},
            "metadata": {"type": ["object", "null"]},
            "total": {"type": ["integer", "null"], "minimum": 0},
            "actions": {"type": ["array", "null"], "maxItems": 8, "uniqueItems": True,
                        "items": {"type": "string", "minLength": 1, "maxLength": 32},
                        "description": "Names of action buttons shown on the run's messages; a tap is handed "
                                       "back in a heartbeat answer's `actions`."},
        },
    },
    "HeartbeatAnswer": {
        "type": "object",
        "required": ["state", "control", "actions"],
        "properties": {
            "state": {"enum": ["running", "stalled", "lost"]},
            "control": {"enum": ["run", "pause", "stop"],
                        "description": "What the chat asks: `stop` (⏹ Stop; the client ends the run at its next "
                                       "step, reporting `cancelled` with exit_reason `stopped from Telegram`), "
                                       "`pause` (⏸ Pause; wait at the next step, keep sending heartbeats) or "
                                       "`run`. It stays until the user changes it."},
            "actions": {"type": "array", "items": {"type": "string"},
                        "description": "Action buttons tapped since the previous answer, oldest first; each is "
                                       "handed over once (a retry with the same Idempotency-Key replays it)."},
        },
    },
    "ProcessState": {
        "type": "object",
        "required": ["state"],
        "properties": {
            "uuid": {"type": "string", "format": "uuid"},
            "state": {"enum": ["running", "stalled", "succeeded", "failed", "cancelled"]},
        },
    },
    "HeartbeatRequest": {
        "type": "object",
        "required": ["uuid"],
        "properties": {
            "uuid": {"type": "string", "format": "uuid"},
            "progress": {
                "type": ["object", "null"],
                "required": ["done"],
                "properties": {
                    "done": {"type": "integer", "minimum": 0},
                    "total": {"type": ["integer", "null"], "minimum": 0},
                },
            },
            "metrics": METRICS,
            "step": {"type": ["number", "null"], "description": "With metrics: a point of the final chart."},
        },
    },
    "FinishRequest": {
        "type": "object",
        "required": ["uuid", "status"],
        "properties": {
            "uuid": {"type": "string", "format": "uuid"},
            "status": {"enum": ["succeeded", "failed", "cancelled"]},
            "error": {"type": ["string", "null"]},
            "traceback": {"type": ["string", "null"], "description": "The last ~25 lines are shown; the whole "
                                                                    "one is attached when longer."},
            "runtime_s": {"type": ["number", "null"], "minimum": 0},
            "peak_memory_mb": {"type": ["number", "null"], "minimum": 0},
            "metrics": METRICS,
            "exit_reason": {"type": ["string", "null"]},
            "diagnosis": {
                "type": ["object", "null"],
                "description": "What the client made of the crash: a one-line `hint` (at most 500 characters) "
                               "and the user's own `frames` (not the standard library or site-packages; at "
                               "most 10, the failing line last).",
                "properties": {
                    "hint": {"type": ["string", "null"], "maxLength": 500},
                    "frames": {"type": ["array", "null"], "maxItems": 10, "items": {
                        "type": "object", "required": ["file"],
                        "properties": {"file": {"type": "string", "maxLength": 300},
                                       "line": {"type": ["integer", "null"], "minimum": 0},
                                       "function": {"type": ["string", "null"], "maxLength": 200},
                                       "code": {"type": ["string", "null"], "maxLength": 500}},
                    }},
                },
            },
        },
    },
}

PATHS: dict[str, Any] = {
    "/api/register": {
        "post": {
            "operationId": "register",
            "summary": "Start pairing a machine (device login): no key needed.",
            "description": "At most 20 pending pairings per client address per 10 minutes. "
                           "`Idempotency-Key` is ignored here (a retry just starts another pairing).",
            "security": [],
            "requestBody": _json_body("RegisterRequest", {"hostname": "gpu-box", "label": "train.py"},
                                      required=False),
            "responses": {
                "201": _ok("Pairing started.", "RegisterResponse"),
                "400": KEYED_ERRORS["400"],
                "429": RATE_LIMITED,
            },
        }
    },
    "/api/register/{code}": {
        "get": {
            "operationId": "pollRegistration",
            "summary": "Poll a pairing until the user confirmed it in Telegram; returns the key once.",
            "security": [],
            "parameters": [
                {"name": "code", "in": "path", "required": True, "schema": {"type": "string"}},
                {"name": "secret", "in": "query", "required": True, "schema": {"type": "string"}},
            ],
            "responses": {
                "200": _ok("`pending`, or `confirmed` with `api_key` (once).", "PollResponse"),
                "400": _error("No secret."),
                "403": _error("Wrong secret."),
                "404": _error("Unknown code, or the key was already fetched."),
                "410": _error("Expired (`expired`)."),
            },
        }
    },
    "/api/validate": {
        "get": {
            "operationId": "validate",
            "summary": "Check a key and see whose chat it reaches.",
            "responses": {"200": _ok("The key is active.", "ValidateResponse"),
                          **{k: v for k, v in KEYED_ERRORS.items() if k in ("401", "403", "429")}},
        }
    },
    "/api/notify": {
        "post": {
            "operationId": "notify",
            "summary": "Queue a message (optionally with one file) for the key's chat.",
            "parameters": [IDEMPOTENCY_KEY],
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": _ref("NotifyRequest"),
                        "example": {"text": "Training started", "level": "info", "format": "text",
                                    "process_id": None, "metadata": {"host": "gpu-box", "script": "train.py"}},
                    },
                    "multipart/form-data": {"schema": _ref("NotifyMultipart")},
                },
            },
            "responses": {"202": _ok("Queued.", "NotifyResponse"), **KEYED_ERRORS, "429": NOTIFY_RATE_LIMITED},
        }
    },
    "/api/notify/batch": {
        "post": {
            "operationId": "notifyBatch",
            "summary": "Queue up to 100 messages (no files) in one request, in one transaction.",
            "description": "The batch form of `POST /api/notify`: each item is the single form's JSON body plus "
                           "its own optional `idempotency_key`, and is answered, in order, with what the single "
                           "form would have answered it (`status` and `body`). A bad item is answered 400 in "
                           "its place; the others are queued. The batch counts as one request against the "
                           "request limits and by its messages and bytes against the per-minute notification "
                           "budget; when that is exhausted nothing is queued (429). Messages with files go "
                           "one per request to `POST /api/notify`.",
            "parameters": [IDEMPOTENCY_KEY],
            "requestBody": _json_body("NotifyBatchRequest", {"messages": [
                {"text": "epoch 1: loss 0.52", "level": "info", "format": "text", "process_id": EXAMPLE_UUID,
                 "metadata": {"host": "gpu-box", "script": "train.py"},
                 "idempotency_key": "2b1e9c4e-7d0f-4a8e-9a51-3c6f0e2d7b10"},
                {"text": "*epoch 2*: loss 0.31", "level": "success", "format": "markdown", "process_id": None,
                 "metadata": {}, "idempotency_key": "9f3a7c21-5e4b-4d6a-8b2c-1a0e9d8c7f65"},
            ]}),
            "responses": {
                "200": _ok("Each message answered (see `results`).", "NotifyBatchResponse"),
                **KEYED_ERRORS,
                "400": _error("Not a batch: `messages` missing, not a list or empty."),
                "413": _error("More than 100 messages (`too_many_messages`), or a body over 256 KiB."),
                "429": NOTIFY_RATE_LIMITED,
            },
        }
    },
    "/api/processes/start": {
        "post": {
            "operationId": "startProcess",
            "summary": "Start tracking a process (a repeated start of the same uuid answers 200).",
            "parameters": [IDEMPOTENCY_KEY],
            "requestBody": _json_body("StartRequest", {
                "uuid": EXAMPLE_UUID, "name": "train.py", "tags": ["lr=0.1"], "parent_uuid": PARENT_UUID,
                "heartbeat_interval": 60, "metadata": {"host": "gpu-box"}, "total": 1000,
                "actions": ["lr ×0.5"],
            }),
            "responses": {
                "201": _ok("Started.", "ProcessState"),
                "200": _ok("Already started earlier.", "ProcessState"),
                "409": _error("The uuid belongs to another account's process."),
                **KEYED_ERRORS,
            },
        }
    },
    "/api/heartbeat": {
        "post": {
            "operationId": "heartbeat",
            "summary": "Keep a process alive; report progress and metrics.",
            "description": "Progress edits one message in place (only when the shown percentage changes); "
                           "`metrics` with a `step` are kept as a series for the final chart. A stalled "
                           "process that sends a heartbeat is reported as recovered. The answer carries "
                           "what the user asked from the chat (⏹ Stop, ⏸ Pause, action buttons): the "
                           "server never connects to the client.",
            "parameters": [IDEMPOTENCY_KEY],
            "requestBody": _json_body("HeartbeatRequest", {
                "uuid": EXAMPLE_UUID, "progress": {"done": 30, "total": 100}, "metrics": {"loss": 0.3},
                "step": 30,
            }),
            "responses": {
                "200": _ok("Recorded; the chat's commands for the client.", "HeartbeatAnswer"),
                "404": _error("Unknown process (`unknown_process`)."),
                "409": _error("The process has already finished."),
                **KEYED_ERRORS,
            },
        }
    },
    "/api/processes/finish": {
        "post": {
            "operationId": "finishProcess",
            "summary": "Report how a process ended (a repeat with the same status answers 200).",
            "parameters": [IDEMPOTENCY_KEY],
            "requestBody": _json_body("FinishRequest", {
                "uuid": EXAMPLE_UUID, "status": "failed", "error": "ValueError: bad shape",
                "traceback": "Traceback (most recent call last):\n  File \"train.py\", line 3, in <module>\n"
                             "ValueError: bad shape",
                "runtime_s": 12.3, "peak_memory_mb": 512.0, "metrics": {"loss": 0.25}, "exit_reason": None,
            }),
            "responses": {
                "200": _ok("Finished.", "ProcessState"),
                "404": _error("Unknown process (`unknown_process`)."),
                "409": _error("Already finished with another status."),
                **KEYED_ERRORS,
            },
        }
    },
    "/api/openapi.json": {
        "get": {
            "operationId": "openapi",
            "summary": "This document.",
            "security": [],
            "responses": {"200": {"description": "OpenAPI 3.1", "content": {"application/json": {}}}},
        }
    },
}

OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "StatsBot notification API",
        "version": "1.0.0",
        "description": "What the `experiment_bot` client library speaks: notifications, tracked processes "
                       "with heartbeats, and device pairing. Errors are `{\"error\": {\"code\", \"message\"}}`. "
                       "See docs/notify-api.md.",
    },
    "paths": PATHS,
    "components": {
        "schemas": SCHEMAS,
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "description": "exp_… key"}},
    },
    "security": [{"bearer": []}],
}


def openapi_schema(server_url: str | None = None) -> dict[str, Any]:
    """A copy of the document, with ``servers`` set when the base URL is known."""
    schema = copy.deepcopy(OPENAPI)
    if server_url:
        schema["servers"] = [{"url": server_url.rstrip("/") or "/"}]
    return schema
