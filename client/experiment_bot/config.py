"""Where the API key, the server URL and the settings come from.

Precedence, highest first: constructor arguments, environment variables, ``.env`` files
(the current directory and its parents up to the git root; nearer files win), the config
file (``.experiment_bot.toml`` / ``.experiment_bot.yml`` found the same way, or the path in
``EXPERIMENT_BOT_CONFIG``), built-in defaults.
"""

from __future__ import annotations

import logging
import math
import os
import re
import sys
from pathlib import Path
from typing import Any

log = logging.getLogger("experiment_bot")

DEFAULT_SERVER = "http://127.0.0.1:8000"

ENV_KEY = "EXPERIMENT_BOT_KEY"
ENV_URL = "EXPERIMENT_BOT_URL"
ENV_CONFIG = "EXPERIMENT_BOT_CONFIG"
ENV_PARENT = "EXPERIMENT_BOT_PARENT"
ENV_DISABLED = "EXPERIMENT_BOT_DISABLED"
ENV_STRICT = "EXPERIMENT_BOT_STRICT"
ENV_HEARTBEAT = "EXPERIMENT_BOT_HEARTBEAT_INTERVAL"
ENV_FLUSH = "EXPERIMENT_BOT_FLUSH_TIMEOUT"

CONFIG_NAMES = (".experiment_bot.toml", ".experiment_bot.yml", ".experiment_bot.yaml")
ERROR_VERBOSITIES = ("low", "medium", "high")

_SETTINGS_KEYS = {
    "auto_git_info": "bool",
    "include_system_info": "bool",
    "error_verbosity": "verbosity",
    "batch_messages": "bool",
    "heartbeat_interval": "seconds",
    "update_interval": "seconds",
    "flush_timeout": "seconds",
}
_NOTIFICATION_KEYS = {
    "on_start": "bool",
    "on_error": "bool",
    "on_success": "bool",
    "progress_interval": "every",
}
_TOP_KEYS = {"api_key", "server", "settings", "notifications"}


class Settings:
    """The resolved configuration of one ``ExperimentBot``."""

    __slots__ = (
        "api_key",
        "api_key_source",
        "server",
        "strict",
        "disabled",
        "config_path",
        "auto_git_info",
        "include_system_info",
        "error_verbosity",
        "batch_messages",
        "heartbeat_interval",
        "update_interval",
        "flush_timeout",
        "on_start",
        "on_error",
        "on_success",
        "progress_interval",
    )

    def __init__(self) -> None:
        self.api_key: str | None = None
        self.api_key_source: str | None = None
        self.server: str = DEFAULT_SERVER
        self.strict: bool = False
        self.disabled: bool = False
        self.config_path: Path | None = None
        self.auto_git_info: bool = True
        self.include_system_info: bool = True
        self.error_verbosity: str = "medium"
        self.batch_messages: bool = True
        self.heartbeat_interval: float = 60.0
        self.update_interval: float = 10.0
        self.flush_timeout: float = 5.0
        self.on_start: bool = True
        self.on_error: bool = True
        self.on_success: bool = True
        self.progress_interval: str | int = "10%"

    def as_dict(self) -> dict[str, Any]:
        out = {name: getattr(self, name) for name in self.__slots__}
        if out["api_key"]:
            out["api_key"] = key_prefix(out["api_key"]) + "…"
        return out

    def __repr__(self) -> str:
        return f"Settings({self.as_dict()!r})"


def key_prefix(key: str) -> str:
    """The public part of a key, safe to print: ``exp_`` plus four characters."""
    return key[:8]


def is_local_host(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ``::1``), bracketed or not."""
    host = host.strip().strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    import ipaddress

    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def normalize_server(url: str) -> str:
    """``host[:port][/path]`` without a scheme gets ``https://``, except on this machine
    (localhost, 127.0.0.1, ::1), which gets ``http://``; a trailing ``/`` or ``/api`` goes."""
    url = url.strip().rstrip("/")
    if url.endswith("/api"):
        url = url[: -len("/api")]
    if "://" not in url:
        authority = url.split("/", 1)[0]
        if authority.startswith("["):  # [::1]:8000
            host = authority[1:].split("]", 1)[0]
        elif authority.count(":") > 1:  # a bare IPv6 address such as ::1
            host = authority
            url = f"[{authority}]" + url[len(authority) :]
        else:
            host = authority.rsplit(":", 1)[0]
        url = ("http://" if is_local_host(host) else "https://") + url
    return url


# --------------------------------------------------------------------------- discovery


def search_dirs(start: Path | None = None) -> list[Path]:
    """``start`` (default: cwd) and its parents up to the enclosing git root.

    Outside a git repository only ``start`` itself is searched, so a stray file in a parent
    directory never leaks into an unrelated project.
    """
    try:
        here = (start or Path.cwd()).resolve()
    except OSError:  # the working directory was deleted under us
        return []
    chain = [here, *here.parents]
    for index, folder in enumerate(chain):
        if (folder / ".git").exists():
            return chain[: index + 1]
    return [here]


_DOTENV_LINE = re.compile(r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*?)\s*$")


def parse_dotenv(text: str) -> dict[str, str]:
    """Parse ``KEY=value`` lines: ``export`` prefix, quotes and ``#`` comments allowed."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        match = _DOTENV_LINE.match(line)
        if not match:
            continue
        name, raw = match.groups()
        if raw[:1] in ("'", '"'):
            quote = raw[0]
            end = raw.find(quote, 1)
            value = raw[1:end] if end != -1 else raw[1:]
            if quote == '"':
                value = value.replace("\\n", "\n").replace('\\"', '"')
        else:
            value = re.split(r"\s+#", raw, maxsplit=1)[0].strip()
        values[name] = value
    return values


def read_dotenv(dirs: list[Path]) -> dict[str, str]:
    """Merge the ``.env`` files of ``dirs`` (ordered nearest first); nearer files win."""
    merged: dict[str, str] = {}
    for folder in reversed(dirs):
        path = folder / ".env"
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        merged.update(parse_dotenv(text))
    return merged


def find_config_file(dirs: list[Path]) -> Path | None:
    for folder in dirs:
        for name in CONFIG_NAMES:
            candidate = folder / name
            if candidate.is_file():
                return candidate
    return None


def load_config_file(path: Path) -> dict[str, Any]:
    """Read a TOML or YAML config file; a missing parser or a syntax error is logged, not raised."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        log.warning("experiment_bot: cannot read config file %s: %s", path, exc)
        return {}
    if path.suffix == ".toml":
        toml = _toml_module()
        if toml is None:
            log.warning(
                "experiment_bot: ignoring %s: reading TOML needs Python 3.11+ or `pip install tomli`",
                path,
            )
            return {}
        try:
            data = toml.loads(raw.decode("utf-8"))
        except Exception as exc:  # tomllib.TOMLDecodeError, UnicodeDecodeError
            log.warning("experiment_bot: ignoring %s: %s", path, exc)
            return {}
    else:
        try:
            import yaml  # type: ignore[import-untyped,unused-ignore]
        except ImportError:
            log.warning("experiment_bot: ignoring %s: reading YAML needs `pip install PyYAML`", path)
            return {}
        try:
            data = yaml.safe_load(raw.decode("utf-8")) or {}
        except Exception as exc:  # yaml.YAMLError, UnicodeDecodeError
            log.warning("experiment_bot: ignoring %s: %s", path, exc)
            return {}
    if not isinstance(data, dict):
        log.warning("experiment_bot: ignoring %s: the top level must be a mapping", path)
        return {}
    return data


def _toml_module() -> Any:
    if sys.version_info >= (3, 11):
        import tomllib

        return tomllib
    try:
        import tomli  # type: ignore[import-not-found]
    except ImportError:
        return None
    return tomli


_INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def interpolate(value: str, variables: dict[str, str]) -> str:
    """Replace ``${NAME}`` and ``${NAME:-default}`` with values from ``variables``."""

    def replace(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        found = variables.get(name)
        if found:
            return found
        return default if default is not None else ""

    return _INTERPOLATION.sub(replace, value)


# --------------------------------------------------------------------------- coercion


def _coerce(kind: str, value: Any, where: str) -> Any:
    """Return the value converted to ``kind``, or raise ValueError with a readable message."""
    if kind == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("1", "true", "yes", "on"):
            return True
        if isinstance(value, str) and value.strip().lower() in ("0", "false", "no", "off", ""):
            return False
        raise ValueError(f"{where}: expected true/false, got {value!r}")
    if kind == "seconds":
        try:
            seconds = float(str(value).strip().rstrip("s")) if isinstance(value, str) else float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{where}: expected a number of seconds, got {value!r}") from None
        if not math.isfinite(seconds):
            raise ValueError(f"{where}: expected a finite number of seconds, got {value!r}")
        if seconds < 0:
            raise ValueError(f"{where}: must not be negative, got {value!r}")
        return seconds
    if kind == "verbosity":
        text = str(value).strip().lower()
        if text not in ERROR_VERBOSITIES:
            raise ValueError(f"{where}: expected one of {', '.join(ERROR_VERBOSITIES)}, got {value!r}")
        return text
    if kind == "every":
        from .progress import parse_every

        try:
            parse_every(value)
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}".replace("every: ", "", 1)) from None
        return value
    raise AssertionError(kind)


def _is_truthy(value: str | None) -> bool:
    return value is not None and value.strip().lower() in ("1", "true", "yes", "on")


def _apply_section(settings: Settings, section: Any, keys: dict[str, str], where: str) -> None:
    if section is None:
        return
    if not isinstance(section, dict):
        log.warning("experiment_bot: %s must be a mapping; ignored", where)
        return
    for name, value in section.items():
        kind = keys.get(name)
        if kind is None:
            log.warning("experiment_bot: unknown setting %s.%s ignored", where, name)
            continue
        try:
            setattr(settings, name, _coerce(kind, value, f"{where}.{name}"))
        except ValueError as exc:
            log.warning("experiment_bot: %s; using the default", exc)


# --------------------------------------------------------------------------- resolution


def resolve(
    api_key: str | None = None,
    server: str | None = None,
    *,
    strict: bool | None = None,
    config_path: str | os.PathLike[str] | None = None,
    overrides: dict[str, Any] | None = None,
    cwd: Path | None = None,
    environ: dict[str, str] | None = None,
) -> Settings:
    """Build the :class:`Settings` from arguments, environment, ``.env`` and the config file."""
    env = dict(os.environ if environ is None else environ)
    settings = Settings()
    dirs = search_dirs(cwd)
    dotenv = read_dotenv(dirs)

    path: Path | None = None
    if config_path is not None:
        path = Path(config_path).expanduser()
        if not path.is_file():
            log.warning("experiment_bot: config file %s not found", path)
            path = None
    elif env.get(ENV_CONFIG):
        path = Path(env[ENV_CONFIG]).expanduser()
        if not path.is_file():
            log.warning("experiment_bot: %s=%s: file not found", ENV_CONFIG, path)
            path = None
    else:
        path = find_config_file(dirs)
    data: dict[str, Any] = load_config_file(path) if path is not None else {}
    settings.config_path = path if data else None

    where = path.name if path is not None else "config"
    for name in data:
        if name not in _TOP_KEYS:
            log.warning("experiment_bot: unknown key %r in %s ignored", name, where)
    _apply_section(settings, data.get("settings"), _SETTINGS_KEYS, "settings")
    _apply_section(settings, data.get("notifications"), _NOTIFICATION_KEYS, "notifications")

    # Environment variables and .env values for the numeric settings.
    for env_name, attribute in ((ENV_HEARTBEAT, "heartbeat_interval"), (ENV_FLUSH, "flush_timeout")):
        raw = env.get(env_name) or dotenv.get(env_name)
        if raw:
            try:
                setattr(settings, attribute, _coerce("seconds", raw, env_name))
            except ValueError as exc:
                log.warning("experiment_bot: %s; using %s", exc, getattr(settings, attribute))

    variables = {**dotenv, **env}
    file_key = data.get("api_key")
    file_key = interpolate(file_key, variables).strip() if isinstance(file_key, str) else None
    file_server = data.get("server")
    file_server = interpolate(file_server, variables).strip() if isinstance(file_server, str) else None

    if api_key:
        settings.api_key, settings.api_key_source = api_key.strip(), "argument"
    elif env.get(ENV_KEY, "").strip():
        settings.api_key, settings.api_key_source = env[ENV_KEY].strip(), f"${ENV_KEY}"
    elif dotenv.get(ENV_KEY, "").strip():
        settings.api_key, settings.api_key_source = dotenv[ENV_KEY].strip(), ".env"
    elif file_key:
        settings.api_key, settings.api_key_source = file_key, str(path)

    chosen = server or env.get(ENV_URL) or dotenv.get(ENV_URL) or file_server or DEFAULT_SERVER
    settings.server = normalize_server(chosen)

    if strict is None:
        strict = _is_truthy(env.get(ENV_STRICT))
    settings.strict = bool(strict)
    settings.disabled = _is_truthy(env.get(ENV_DISABLED))

    for name, value in (overrides or {}).items():
        if value is None:
            continue
        if name not in Settings.__slots__:
            raise TypeError(f"unknown setting {name!r}")
        kind = _SETTINGS_KEYS.get(name) or _NOTIFICATION_KEYS.get(name)
        if kind is not None:
            try:
                value = _coerce(kind, value, name)
            except ValueError as exc:
                if settings.strict:
                    raise
                log.warning("experiment_bot: %s; using %s", exc, getattr(settings, name))
                continue
        setattr(settings, name, value)
    return settings


def reread_key(
    current: str,
    *,
    cwd: Path | None = None,
    config_path: Path | None = None,
    environ: dict[str, str] | None = None,
) -> tuple[str, str] | None:
    """A key other than ``current`` found now in ``$EXPERIMENT_BOT_KEY``, the ``.env`` files or the
    config file (in that order), with where it came from; None when they still hold ``current``
    or nothing. A running script calls this when the server refuses its key (after a rotation,
    the user pastes the new key into ``.env`` and the script goes on with it)."""
    env = dict(os.environ if environ is None else environ)
    dirs = search_dirs(cwd)
    dotenv = read_dotenv(dirs)
    candidates = [(env.get(ENV_KEY, ""), f"${ENV_KEY}"), (dotenv.get(ENV_KEY, ""), ".env")]
    path = config_path if config_path is not None else find_config_file(dirs)
    if path is not None and path.is_file():
        raw = load_config_file(path).get("api_key")
        if isinstance(raw, str):
            candidates.append((interpolate(raw, {**dotenv, **env}), str(path)))
    for key, source in candidates:
        key = key.strip()
        if key and key != current:
            return key, source
    return None
