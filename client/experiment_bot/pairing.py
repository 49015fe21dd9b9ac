"""``setup()``: pair this machine with a Telegram chat (device-login) and save the key to ``.env``."""

from __future__ import annotations

import logging
import os
import socket
import stat
import time
from pathlib import Path
from typing import Any

from . import config
from .errors import ApiError, PairingError, TransportError
from .transport import Transport

log = logging.getLogger("experiment_bot")


NO_SERVER_HINT = (
    "experiment_bot.setup(): no server is configured (nothing answers at {default}); pass yours with "
    "experiment_bot.setup(server=\"https://YOUR-STATSBOT-HOST\") or EXPERIMENT_BOT_URL=https://YOUR-STATSBOT-HOST "
    "(the bot's /start message shows the exact command)."
)


class _Unreachable(PairingError):
    """No HTTP answer from the server at all."""


def _say(text: str) -> None:
    print(text, flush=True)


def write_env_values(path: str | os.PathLike[str], values: dict[str, str]) -> Path:
    """Set ``NAME=value`` lines in a dotenv file, keeping every other line.

    A new file is created with mode 0600; an existing file keeps its mode. The file is
    replaced atomically so an interrupted write never leaves half a key behind.
    """
    target = Path(path).expanduser().resolve()
    try:
        lines = target.read_text(encoding="utf-8").splitlines()
        mode = stat.S_IMODE(target.stat().st_mode)
    except FileNotFoundError:
        lines, mode = [], 0o600
    pending = dict(values)
    output: list[str] = []
    for line in lines:
        parsed = config.parse_dotenv(line)
        name = next(iter(parsed), None)
        if name in values:
            if name in pending:
                output.append(f"{name}={pending.pop(name)}")
            continue  # drop duplicate assignments of the same name
        output.append(line)
    output.extend(f"{name}={value}" for name, value in pending.items())
    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write("\n".join(output) + "\n")
        os.chmod(temporary, mode)
        os.replace(temporary, target)
    except BaseException:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise
    return target


def _git_ignores(path: Path) -> bool | None:
    """Whether git ignores ``path`` (None when not in a git repository or git is missing)."""
    import subprocess

    try:
        completed = subprocess.run(
            ["git", "check-ignore", "-q", str(path)],
            cwd=path.parent,
            capture_output=True,
            timeout=2.0,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if completed.returncode == 0:
        return True
    if completed.returncode == 1:
        return False
    return None


def _save(key: str, server: str, env_path: str | os.PathLike[str], server_explicit: bool) -> Path:
    values = {config.ENV_KEY: key}
    if server_explicit and server != config.DEFAULT_SERVER:
        values[config.ENV_URL] = server
    target = write_env_values(env_path, values)
    os.environ[config.ENV_KEY] = key
    if config.ENV_URL in values:
        os.environ[config.ENV_URL] = server
    from . import _reset_default_bot

    _reset_default_bot()
    _say(f"Key {config.key_prefix(key)}… saved to {target}")
    if _git_ignores(target) is False:
        _say(
            f"Note: {target.name} is not ignored by git; add it to .gitignore so the key is never committed."
        )
    return target


def _poll(transport: Transport, poll_url: str, interval: float, expires_in: float) -> str:
    deadline = time.monotonic() + expires_in + interval
    warned = False
    while time.monotonic() < deadline:
        try:
            _status, answer = transport.request("GET", poll_url, auth=False)
        except ApiError as exc:
            if exc.status == 410:
                raise PairingError("the pairing link expired; run setup() again") from None
            if exc.status == 404:
                raise PairingError(
                    "the server no longer knows this pairing code; run setup() again"
                ) from None
            if exc.status == 429 or exc.status >= 500:
                time.sleep(max(interval, exc.retry_after or 0.0))
                continue
            raise PairingError(f"pairing failed: {exc}") from None
        except TransportError as exc:
            if not warned:
                log.warning("experiment_bot: %s; still waiting", exc)
                warned = True
            time.sleep(interval)
            continue
        state = answer.get("status")
        if state == "confirmed":
            key = answer.get("api_key")
            if not isinstance(key, str) or not key:
                raise PairingError("the server confirmed the pairing but sent no key")
            return key
        if state == "expired":
            raise PairingError("the pairing link expired; run setup() again")
        time.sleep(interval)
    raise PairingError("the pairing link expired before it was used; run setup() again")


def setup(
    server: str | None = None,
    env_path: str | os.PathLike[str] = ".env",
    *,
    api_key: str | None = None,
    label: str | None = None,
) -> str | None:
    """Pair this machine with your Telegram chat and save the key to ``env_path``.

    Without ``api_key``: registers, prints a link to open on your phone, waits until you press
    Start, then writes ``EXPERIMENT_BOT_KEY=…`` to ``.env`` (mode 0600, other lines kept).
    With ``api_key="exp_…"``: checks a pasted key with the server, then saves it.
    Returns the key, or None when cancelled with Ctrl-C or when no server is configured and
    the default one does not answer (one line then says how to pass it). Raises
    :class:`PairingError`.
    """
    settings = config.resolve(server=server)
    server_url = settings.server
    server_explicit = server is not None or bool(os.environ.get(config.ENV_URL))
    # Nothing configured: the development default is tried, and if nothing answers there one
    # line says how to pass a server (instead of a traceback).
    unconfigured = server is None and server_url == config.normalize_server(config.DEFAULT_SERVER)
    if api_key is not None:
        try:
            return _setup_with_key(api_key.strip(), server_url, env_path, server_explicit)
        except _Unreachable:
            if unconfigured:
                _say(NO_SERVER_HINT.format(default=server_url))
                return None
            raise

    transport = Transport(server_url, None, timeout=15.0)
    hostname = socket.gethostname()
    body: dict[str, Any] = {"hostname": hostname}
    if label:
        body["label"] = label
    try:
        _status, answer = transport.request("POST", "/api/register", body=body, auth=False)
    except TransportError as exc:
        if unconfigured:
            _say(NO_SERVER_HINT.format(default=server_url))
            return None
        raise PairingError(f"cannot start pairing with {server_url}: {exc}") from None
    except ApiError as exc:
        raise PairingError(f"cannot start pairing with {server_url}: {exc}") from None
    link, poll_url = answer.get("link"), answer.get("poll_url")
    if not link or not poll_url:
        raise PairingError(f"unexpected answer from {server_url}/api/register: {answer!r}")
    interval = float(answer.get("interval") or 2)
    expires_in = float(answer.get("expires_in") or 600)
    _say(f"Open this link on your phone and press Start: {link}")
    _say(f"Waiting for you to confirm (the link expires in {expires_in / 60:.0f} min; Ctrl-C to cancel)…")
    try:
        key = _poll(transport, poll_url, interval, expires_in)
    except KeyboardInterrupt:
        _say("Pairing cancelled; nothing was saved.")
        return None
    _say(f"Paired {hostname} with your chat.")
    _save(key, server_url, env_path, server_explicit)
    return key


def _setup_with_key(
    key: str, server_url: str, env_path: str | os.PathLike[str], server_explicit: bool
) -> str:
    if not key:
        raise PairingError("empty API key")
    transport = Transport(server_url, key, timeout=15.0)
    try:
        _status, answer = transport.request("GET", "/api/validate")
    except ApiError as exc:
        if exc.status == 401:
            raise PairingError(f"the server rejected this key ({exc.message or exc.code})") from None
        raise PairingError(f"cannot validate the key with {server_url}: {exc}") from None
    except TransportError as exc:
        raise _Unreachable(str(exc)) from None
    if answer.get("valid") is False:
        raise PairingError("the server says this key is not valid")
    account = answer.get("account") or {}
    who = account.get("username") or account.get("first_name")
    _say(f"Key is valid{f' (account: {who})' if who else ''}.")
    _save(key, server_url, env_path, server_explicit)
    return key
