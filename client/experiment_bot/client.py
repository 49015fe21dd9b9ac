"""``ExperimentBot``: the object behind ``experiment_bot.bot``."""

from __future__ import annotations

import logging
import math
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, TypeVar, overload

from . import config
from ._log import warn_once as _warn_once
from .errors import ConfigurationError, DeliveryError
from .payload import as_uuid, jsonable
from .sender import CRITICAL, NOTE, Envelope, Sender
from .tracker import _AUTO, ProcessTracker, Run, current_run
from .transport import Transport

if TYPE_CHECKING:
    from .config import Settings
    from .repeats import Repeats

log = logging.getLogger("experiment_bot")

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")

LEVELS = ("info", "success", "warning", "error")
FORMATS = ("text", "markdown", "html")
MAX_FILE_BYTES = 10 * 2**20
MAX_TEXT_CHARS = 65_000  # the server refuses texts over 65,536 characters
SETUP_HINT = 'python -c "import experiment_bot; experiment_bot.setup()"'


class ExperimentBot:
    """Sends notifications and tracked-process updates to a StatsBot server.

    Nothing here blocks on the network or raises into your code (unless ``strict=True``):
    messages are queued and delivered by a background thread, retried while the server is
    down, and flushed at exit for at most ``flush_timeout`` seconds.
    """

    def __init__(
        self,
        api_key: str | None = None,
        server: str | None = None,
        *,
        strict: bool | None = None,
        config_path: str | os.PathLike[str] | None = None,
        heartbeat_interval: float | None = None,
        update_interval: float | None = None,
        flush_timeout: float | None = None,
        queue_size: int = 1000,
        retry_base_delay: float = 0.5,
        retry_max_delay: float = 30.0,
        timeout: float = 10.0,
    ) -> None:
        self.settings: Settings = config.resolve(
            api_key,
            server,
            strict=strict,
            config_path=config_path,
            overrides={
                "heartbeat_interval": heartbeat_interval,
                "update_interval": update_interval,
                "flush_timeout": flush_timeout,
            },
        )
        self._queue_size = queue_size
        self._retry = (retry_base_delay, retry_max_delay)
        self._timeout = timeout
        self._sender: Sender | None = None
        self._sender_lock = threading.Lock()
        try:
            self._cwd: Path | None = Path.cwd()  # where .env was found; re-read there if the key is refused
        except OSError:
            self._cwd = None
        if not self.settings.api_key and not self.settings.disabled:
            if self.settings.strict:
                raise ConfigurationError(
                    "experiment_bot: no API key (argument, $EXPERIMENT_BOT_KEY, .env or config file). "
                    f"Pair this machine with: {SETUP_HINT}"
                )
            _warn_once(
                "no-key",
                "experiment_bot: no API key found ($EXPERIMENT_BOT_KEY, .env or .experiment_bot.toml), so "
                "notifications are switched off and your script runs unchanged. Pair this machine once with: %s",
                SETUP_HINT,
            )
        elif self.settings.api_key and not self.settings.api_key.startswith("exp_"):
            _warn_once(
                "odd-key",
                "experiment_bot: the API key from %s does not start with 'exp_'; is it the right value?",
                self.settings.api_key_source,
            )

    def __repr__(self) -> str:
        key = config.key_prefix(self.settings.api_key) + "…" if self.settings.api_key else None
        return f"<ExperimentBot server={self.settings.server!r} key={key!r} enabled={self.enabled}>"

    # ------------------------------------------------------------------ state

    @property
    def enabled(self) -> bool:
        """True when messages are actually sent (a key is configured and not disabled)."""
        return bool(self.settings.api_key) and not self.settings.disabled

    @property
    def server(self) -> str:
        return self.settings.server

    @property
    def current_run(self) -> Run | None:
        """The innermost active tracked run of this thread (or of the main thread)."""
        return current_run()

    def _get_sender(self) -> Sender:
        with self._sender_lock:
            if self._sender is None:
                from .spool import Spool

                transport = Transport(self.settings.server, self.settings.api_key, timeout=self._timeout)
                self._sender = Sender(
                    transport,
                    maxsize=self._queue_size,
                    flush_timeout=self.settings.flush_timeout,
                    base_delay=self._retry[0],
                    max_delay=self._retry[1],
                    spool=Spool(self.settings.server, self.settings.api_key or ""),
                )
                if self.settings.api_key_source != "argument":  # a key given in code is not looked up again
                    self._sender.key_refresh = self._reread_key
            return self._sender

    def _reread_key(self, current: str) -> tuple[str, str] | None:
        """After the server refused ``current``: another key in the environment, ``.env`` or the
        config file, as found from the directory the bot was created in."""
        found = config.reread_key(current, cwd=self._cwd, config_path=self.settings.config_path)
        if found is not None:  # validate() and the spool follow the key the sender switches to
            self.settings.api_key, self.settings.api_key_source = found
        return found

    def _enqueue(self, envelope: Envelope) -> bool:
        if not self.enabled:
            return False
        return self._get_sender().put(envelope)

    def _update_gap(self) -> float:
        return self.settings.update_interval if self.settings.batch_messages else 0.0

    def _check(self) -> bool:
        """True if calls should send; in strict mode raise what went wrong before."""
        if self.settings.strict and self._sender is not None:
            errors = self._sender.take_errors()
            if errors:
                raise DeliveryError("; ".join(errors))
        return self.enabled

    def _invalid(self, message: str) -> None:
        if self.settings.strict:
            raise ValueError(message)
        _warn_once(message, "experiment_bot: %s", message)

    # ------------------------------------------------------------------ notifications

    def notify(
        self,
        message: str,
        level: str = "info",
        *,
        format: str = "text",
        metadata: dict[str, Any] | None = None,
        file: str | os.PathLike[str] | None = None,
        process_id: str | None = None,
    ) -> bool:
        """Queue a message for the chat; returns at once (False when nothing will be sent).

        ``level``: info, success, warning, error. ``format``: text, markdown, html.
        ``file``: a path sent along (images become photos, anything else a document).
        """
        if not self._check():
            return False
        if level not in LEVELS:
            self._invalid(f"unknown level {level!r} (use one of {', '.join(LEVELS)}); sent as info")
            level = "info"
        if format not in FORMATS:
            self._invalid(f"unknown format {format!r} (use one of {', '.join(FORMATS)}); sent as text")
            format = "text"
        text = str(message)
        if len(text) > MAX_TEXT_CHARS:
            text = (
                text[:MAX_TEXT_CHARS] + f"\n… ({len(text) - MAX_TEXT_CHARS} characters cut by experiment_bot)"
            )
        attachment = None
        if file is not None:
            attachment, problem = self._read_attachment(file)
            if problem:
                if self.settings.strict:
                    raise ValueError(problem)
                log.warning("experiment_bot: %s; sending the message without it", problem)
                text = f"{text}\n({problem})"
        if not text.strip() and attachment is None:
            self._invalid("notify() needs a non-empty message; nothing sent")
            return False
        if process_id is not None:
            process_id = as_uuid(process_id, "process_id")
        else:
            run = current_run()
            if run is not None and run.bot is self and run._remote:
                process_id = run.uuid
        user_metadata = jsonable(metadata or {})
        body: dict[str, Any] = {
            "text": text,
            "level": level,
            "format": format,
            "process_id": process_id,
            "metadata": {},
        }

        def prepare(payload: dict[str, Any]) -> None:
            from .metadata import light

            payload["metadata"] = {**light(), **payload.get("metadata", {}), **user_metadata}

        envelope = Envelope(
            "/api/notify",
            body,
            kind="notify",
            priority=CRITICAL if level == "error" else NOTE,
            file=attachment,
            prepare=prepare,
        )
        return self._enqueue(envelope)

    def attach(
        self,
        path: str | os.PathLike[str],
        caption: str | None = None,
        *,
        level: str = "info",
        process_id: str | None = None,
    ) -> bool:
        """Send a file (a log, a plot) with an optional caption."""
        return self.notify(
            caption or os.path.basename(os.fspath(path)), level, file=path, process_id=process_id
        )

    @staticmethod
    def _read_attachment(path: str | os.PathLike[str]) -> tuple[tuple[str, bytes, str] | None, str | None]:
        name = os.path.basename(os.fspath(path))
        try:
            size = os.path.getsize(path)
            if size > MAX_FILE_BYTES:
                return None, (
                    f"file {name} is {size / 2**20:.1f} MB, more than the {MAX_FILE_BYTES / 2**20:g} MB "
                    "the server accepts; not attached"
                )
            with open(path, "rb") as handle:
                content = handle.read(MAX_FILE_BYTES + 1)
        except OSError as exc:
            return None, f"cannot read file {name}: {exc.strerror or exc}"
        if len(content) > MAX_FILE_BYTES:
            return None, f"file {name} grew past {MAX_FILE_BYTES / 2**20:g} MB while being read; not attached"
        import mimetypes

        content_type = mimetypes.guess_type(name)[0]
        if content_type is None:
            text_like = name.lower().endswith(
                (".log", ".out", ".err", ".txt", ".jsonl", ".yaml", ".yml", ".toml")
            )
            content_type = "text/plain" if text_like else "application/octet-stream"
        return (name, content, content_type), None

    # ------------------------------------------------------------------ tracked processes

    @overload
    def track(self, func: F, /) -> F: ...

    @overload
    def track(
        self,
        name: str | None = None,
        /,
        *,
        tags: list[str] | tuple[str, ...] | None = None,
        parent: Any = _AUTO,
        heartbeat_interval: float | None = None,
        total: int | None = None,
        metadata: dict[str, Any] | None = None,
        actions: dict[str, Callable[[], Any]] | None = None,
    ) -> ProcessTracker: ...

    def track(
        self,
        name_or_func: Any = None,
        /,
        *,
        name: str | None = None,
        tags: list[str] | tuple[str, ...] | None = None,
        parent: Any = _AUTO,
        heartbeat_interval: float | None = None,
        total: int | None = None,
        metadata: dict[str, Any] | None = None,
        actions: dict[str, Callable[[], Any]] | None = None,
    ) -> Any:
        """Track a process: ``@bot.track``, ``@bot.track(name=..., tags=[...])`` or
        ``with bot.track("name", tags=[...], parent=run) as run:``.

        ``parent``: a :class:`Run`, a process uuid, or None for a top-level process; by
        default the enclosing run of this thread (else of the main thread, else the uuid in
        ``$EXPERIMENT_BOT_PARENT`` inherited from a parent process).

        The run's messages in Telegram carry ⏹ Stop (and ⏸ Pause with progress). ``actions``
        (``{"lr ×0.5": fn}``) adds buttons whose taps call ``fn()`` in this process at the
        next step (``track_progress`` or ``run.checkpoint()``).
        """
        self._check()
        if callable(name_or_func):
            return ProcessTracker(
                self,
                name,
                tags=tags,
                parent=parent,
                heartbeat_interval=heartbeat_interval,
                total=total,
                metadata=metadata,
                actions=actions,
            )(name_or_func)
        if name_or_func is not None and name is not None:
            raise TypeError("track(): give the name once")
        return ProcessTracker(
            self,
            name_or_func if name_or_func is not None else name,
            tags=tags,
            parent=parent,
            heartbeat_interval=heartbeat_interval,
            total=total,
            metadata=metadata,
            actions=actions,
        )

    @property
    def should_stop(self) -> bool:
        """True once ⏹ Stop was tapped in Telegram for an active run of this bot (poll it in
        loops that do not use ``track_progress``)."""
        from .tracker import stop_requested

        return stop_requested(self)

    def track_progress(
        self,
        iterable: Iterable[T],
        total: int | None = None,
        every: str | int | None = None,
        name: str | None = None,
    ) -> Iterator[T]:
        """Iterate and report progress (every 10% by default, an int for every N items, "30s"
        for every 30 seconds, and always at the end). Starts a tracked process when none is
        active."""
        from .progress import parse_every, track_progress

        if every is not None:
            try:
                parse_every(every)
            except ValueError as exc:
                if self.settings.strict:
                    raise
                _warn_once(f"every:{every!r}", "experiment_bot: %s; using 10%%", exc)
                every = "10%"
        return track_progress(self, iterable, total=total, every=every, name=name)

    def catch(
        self,
        label: str | Callable[..., Any] | None = None,
        /,
        *,
        iteration: int | None = None,
        reraise: bool = False,
        exceptions: type[BaseException] | tuple[type[BaseException], ...] = Exception,
    ) -> Any:
        """Report an exception of one loop step and go on: ``with bot.catch("step"): ...`` or
        ``@bot.catch``. Repeats of the same error (type and line) edit one message with the
        count, the first/last iteration (``iteration=``, else the enclosing ``track_progress``
        item) and one traceback. ``reraise=True`` reports and re-raises."""
        from .repeats import Catch

        if callable(label):
            return Catch(self, None, iteration=iteration, reraise=reraise, exceptions=exceptions)(label)
        return Catch(self, label, iteration=iteration, reraise=reraise, exceptions=exceptions)

    @property
    def _repeats(self) -> Repeats:
        repeats = self.__dict__.get("_repeats_store")
        if repeats is None:
            from .repeats import Repeats

            repeats = self.__dict__.setdefault("_repeats_store", Repeats(self))
        return repeats

    def _send_repeat(self, group: str, text: str, process_id: str | None) -> None:
        """Queue one (edited) message of ``bot.catch()``: the same ``group`` edits the same message."""
        if not self._check():
            return
        body: dict[str, Any] = {
            "text": text,
            "level": "error",
            "format": "markdown",
            "process_id": process_id,
            "metadata": {},
            "group": group,
        }
        envelope = Envelope("/api/notify", body, kind="notify", priority=CRITICAL, coalesce=group)
        envelope.extra_fields.append("group")
        self._enqueue(envelope)

    def _start_auto_run(self, name: str | None, total: int | None) -> Run:
        return ProcessTracker(self, name, total=total).start_run(auto=True)

    def log_metrics(self, step: Any = None, /, **values: Any) -> None:
        """Record metrics on the current run (``bot.log_metrics(epoch, loss=0.3)``)."""
        run = current_run()
        if run is None:
            if self.settings.strict:
                raise ConfigurationError("log_metrics() needs an active tracked run (bot.track)")
            _warn_once(
                "metrics-no-run", "experiment_bot: log_metrics() called outside a tracked run; ignored"
            )
            return
        run.log_metrics(step, **values)

    def _send_start(self, run: Run) -> None:
        from .metadata import collect

        settings = self.settings
        user_metadata = jsonable(run.metadata)
        prefs = {
            name: getattr(settings, name)
            for name in ("on_start", "on_success", "on_error")
            if not getattr(settings, name)
        }
        body: dict[str, Any] = {
            "uuid": run.uuid,
            "name": run.name,
            "tags": run.tags,
            "parent_uuid": run.parent_uuid,
            # Whole seconds, rounded up (never a false stall); 0 turns the server's stall check off.
            "heartbeat_interval": max(1, math.ceil(run.heartbeat_interval))
            if run.heartbeat_interval > 0
            else 0,
            "metadata": {},
            "total": run.total,
        }
        if run.actions:
            body["actions"] = list(run.actions)

        def prepare(payload: dict[str, Any]) -> None:
            data = collect(include_git=settings.auto_git_info, include_system=settings.include_system_info)
            if prefs:
                data["notify_prefs"] = {**{"on_start": True, "on_success": True, "on_error": True}, **prefs}
            payload["metadata"] = {**data, **payload.get("metadata", {}), **user_metadata}

        self._enqueue(
            Envelope("/api/processes/start", body, kind="start", priority=CRITICAL, prepare=prepare)
        )

    def _send_finish(self, run: Run, traceback: str | None) -> None:
        from .metadata import peak_memory_mb

        body = {
            "uuid": run.uuid,
            "status": run.status,
            "error": run.error,
            "traceback": traceback,
            "runtime_s": round(run.runtime, 3),
            "peak_memory_mb": peak_memory_mb(),
            "metrics": {name: value for name, value in run.metrics.items() if value is not None},
            "exit_reason": run.exit_reason,
        }
        if run.diagnosis:
            body["diagnosis"] = run.diagnosis
        self._enqueue(Envelope("/api/processes/finish", body, kind="finish", priority=CRITICAL))

    # ------------------------------------------------------------------ delivery control

    def flush(self, timeout: float | None = None) -> bool:
        """Wait (at most ``timeout``, default ``flush_timeout``) until queued messages are sent."""
        repeats = self.__dict__.get("_repeats_store")
        if repeats is not None:
            repeats.flush()  # the latest counts of bot.catch()
        if self._sender is None:
            return True
        done = self._sender.flush(timeout)
        self._check()
        return done

    def close(self, timeout: float | None = None) -> bool:
        """Flush, then stop the background thread; the bot sends nothing afterwards. What
        could not be sent within ``timeout`` goes to the spool (sent by the next process)."""
        if self._sender is None:
            return True
        return self._sender.close(timeout)

    @property
    def stats(self) -> dict[str, int]:
        """Message counters of this process: ``sent`` (accepted by the server; ``delivered``
        is the same number, its older name), ``spooled`` (written to the local spool for a
        later process), ``dropped`` (given up on), ``pending`` (queued or in flight) and
        ``from_spool`` (messages of earlier runs this process took from the spool)."""
        if self._sender is None:
            counts = {"sent": 0, "spooled": 0, "dropped": 0, "pending": 0, "from_spool": 0}
        else:
            counts = self._sender.counts()
        return {"delivered": counts["sent"], **counts}

    def validate(self) -> dict[str, Any]:
        """Check the key now (synchronous ``GET /api/validate``); raises ApiError / TransportError."""
        if not self.settings.api_key:
            raise ConfigurationError(f"no API key configured; run {SETUP_HINT}")
        transport = Transport(self.settings.server, self.settings.api_key, timeout=self._timeout)
        return transport.request("GET", "/api/validate")[1]
