"""HTTP calls to the StatsBot JSON API (standard library only).

One call, one attempt: retrying is the sender's job. ``urllib.request`` is imported on the
first call, never at import time. Redirects are never followed: urllib would send the
``Authorization`` header on to the new address and turn a POST into a GET, so a 3xx answer
is an :class:`ApiError` saying where the server pointed.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from .errors import ApiError, TransportError

USER_AGENT = "experiment-bot/{version} python/{python}"
DEFAULT_TIMEOUT = 10.0


def _version() -> str:
    from . import __version__

    return __version__


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        import email.utils
        import time

        when = email.utils.parsedate_to_datetime(value)
        return max(0.0, when.timestamp() - time.time())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def valid_unicode(text: str) -> str:
    """``text`` with every lone surrogate replaced by U+FFFD (and surrogate pairs joined).

    Lone surrogates come from bytes that were not valid UTF-8, e.g. a run named after a file
    whose name is not UTF-8 (``os.fsdecode`` keeps such bytes as lone surrogates, U+DC80 to
    U+DCFF). They cannot be encoded as UTF-8, and a JSON escape of one is refused by strict
    servers, so a crash notice could be lost for a file name.
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
    return text


def encode_json(body: Any) -> bytes:
    """``body`` as UTF-8 JSON; invalid Unicode in any string or key becomes U+FFFD."""
    return valid_unicode(json.dumps(body, allow_nan=False, ensure_ascii=False)).encode("utf-8")


def encode_multipart(fields: dict[str, tuple[str | None, bytes, str]]) -> tuple[bytes, str]:
    """Encode ``{name: (filename or None, content, content_type)}`` as multipart/form-data."""
    import uuid

    boundary = "experiment-bot-" + uuid.uuid4().hex
    chunks: list[bytes] = []
    for name, (filename, content, content_type) in fields.items():
        disposition = f'form-data; name="{name}"'
        if filename is not None:
            safe = filename.replace("\\", "\\\\").replace('"', '\\"').replace("\r", "").replace("\n", "")
            disposition += f'; filename="{valid_unicode(safe)}"'
        chunks.append(
            (
                f"--{boundary}\r\nContent-Disposition: {disposition}\r\nContent-Type: {content_type}\r\n\r\n"
            ).encode()
        )
        chunks.append(content)
        chunks.append(b"\r\n")
    chunks.append(f"--{boundary}--\r\n".encode())
    return b"".join(chunks), f"multipart/form-data; boundary={boundary}"


_opener: Any = None


def _no_redirect_opener() -> Any:
    """A urllib opener like ``urlopen``'s, except that a 3xx answer is not followed but
    raised as ``HTTPError`` (``redirect_request`` returning None does exactly that)."""
    global _opener
    if _opener is None:
        import urllib.request

        class RefuseRedirects(urllib.request.HTTPRedirectHandler):
            def redirect_request(
                self, req: Any, fp: Any, code: int, msg: str, headers: Any, newurl: str
            ) -> None:
                return None

        _opener = urllib.request.build_opener(RefuseRedirects())
    return _opener


class Transport:
    """Makes single HTTP requests against one server with one key."""

    def __init__(self, server: str, api_key: str | None, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.server = server.rstrip("/")
        self.api_key = api_key
        self.timeout = timeout
        self.user_agent = USER_AGENT.format(version=_version(), python=sys.version.split()[0])

    def url(self, path: str) -> str:
        if path.startswith(("http://", "https://")):
            return path
        return self.server + path

    def request(
        self,
        method: str,
        path: str,
        *,
        body: dict[str, Any] | None = None,
        file: tuple[str, bytes, str] | None = None,
        idempotency_key: str | None = None,
        auth: bool = True,
        timeout: float | None = None,
    ) -> tuple[int, dict[str, Any]]:
        """Send one request; return ``(status, json_body)``.

        Raises :class:`ApiError` for an HTTP error status and :class:`TransportError` when no
        HTTP answer was obtained.
        """
        import urllib.error
        import urllib.request

        headers = {"Accept": "application/json", "User-Agent": self.user_agent}
        if auth and self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        if idempotency_key:
            headers["Idempotency-Key"] = idempotency_key
        data: bytes | None = None
        if file is not None:
            payload = encode_json(body or {})
            data, content_type = encode_multipart(
                {"payload": (None, payload, "application/json"), "file": file}
            )
            headers["Content-Type"] = content_type
        elif body is not None:
            data = encode_json(body)
            headers["Content-Type"] = "application/json"

        request = urllib.request.Request(self.url(path), data=data, headers=headers, method=method)
        try:
            with _no_redirect_opener().open(request, timeout=timeout or self.timeout) as response:
                status = response.status
                raw = response.read()
        except urllib.error.HTTPError as exc:
            try:
                raw_error = exc.read()
            except Exception:  # the body may be unreadable once the connection broke
                raw_error = b""
            finally:
                exc.close()
            if 300 <= exc.code < 400:
                location = exc.headers.get("Location") if exc.headers else None
                raise ApiError(exc.code, "redirect", _redirect_message(self.url(path), location)) from None
            code, message = _error_fields(raw_error, exc.code, exc.reason)
            retry_after = parse_retry_after(exc.headers.get("Retry-After") if exc.headers else None)
            raise ApiError(exc.code, code, message, retry_after) from None
        except urllib.error.URLError as exc:
            raise TransportError(f"cannot reach {self.server}: {exc.reason}") from None
        except (OSError, ValueError) as exc:
            # ConnectionResetError, socket.timeout, http.client.HTTPException (e.g. RemoteDisconnected
            # is an OSError; IncompleteRead/BadStatusLine are HTTPException -> caught below).
            raise TransportError(f"request to {self.server} failed: {exc!r}") from None
        except Exception as exc:
            import http.client

            if isinstance(exc, http.client.HTTPException):
                raise TransportError(f"broken response from {self.server}: {exc!r}") from None
            raise
        return status, _json_or_empty(raw)


def _redirect_message(url: str, location: str | None) -> str:
    import urllib.parse

    if not location:
        return f"{url} answered with a redirect; redirects are not followed. Check the server URL"
    target = urllib.parse.urljoin(url, location)
    parts = urllib.parse.urlsplit(target)
    base = f"{parts.scheme}://{parts.netloc}" if parts.scheme and parts.netloc else target
    return (
        f"{url} redirects to {target}; redirects are not followed (the API key would go along and a "
        f"POST would become a GET). Set the server URL to the final address, e.g. EXPERIMENT_BOT_URL={base}"
    )


def _json_or_empty(raw: bytes) -> dict[str, Any]:
    if not raw:
        return {}
    try:
        parsed = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return {}
    return parsed if isinstance(parsed, dict) else {"data": parsed}


def _error_fields(raw: bytes, status: int, reason: Any) -> tuple[str, str]:
    parsed = _json_or_empty(raw)
    error = parsed.get("error")
    if isinstance(error, dict):
        return str(error.get("code") or status), str(error.get("message") or reason or "")
    if isinstance(error, str):
        return error, str(parsed.get("message") or reason or "")
    return str(status), str(reason or raw[:200].decode("utf-8", "replace"))
