"""A small TCP load balancer for tests, standing in for nginx or a PaaS router.

Each client connection goes, whole, to one backend: the first in the preference order of its
request path (the first line the client sends) that accepts a TCP connection. Bytes are copied
unchanged both ways (HTTP, keep-alive and WebSocket upgrades alike); when either side closes,
so does the other — as a load balancer does when a backend dies. Every routed connection is
recorded, so a test can say which process served what.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class Route:
    request_line: str
    port: int
    at: float  # time.time() when the backend accepted the connection

    @property
    def path(self) -> str:
        parts = self.request_line.split()
        return parts[1] if len(parts) > 1 else ""


class Balancer:
    """Listens on 127.0.0.1:<port> in its own thread.

    ``backends`` are ports; ``prefer`` maps a path prefix to the backend port tried first for
    requests under it (longest prefix wins); the others are tried next, in list order.
    """

    def __init__(self, backends: list[int], prefer: dict[str, int] | None = None) -> None:
        self.backends = list(backends)
        self.prefer = dict(prefer or {})
        self.routes: list[Route] = []
        self.refused: list[str] = []  # request lines no backend accepted
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._main, name="balancer", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Balancer:
        self._thread.start()
        if not self._started.wait(10):
            raise AssertionError("the balancer did not start")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._server is not None:
            self._loop.call_soon_threadsafe(self._server.close)
        self._thread.join(10)

    def routes_to(self, path_prefix: str) -> list[Route]:
        return [route for route in self.routes if route.path.startswith(path_prefix)]

    def order_for(self, path: str) -> list[int]:
        matches = [prefix for prefix in self.prefer if path.startswith(prefix)]
        if not matches:
            return list(self.backends)
        first = self.prefer[max(matches, key=len)]
        return [first, *(port for port in self.backends if port != first)]

    def _main(self) -> None:
        async def serve() -> None:
            self._loop = asyncio.get_running_loop()
            self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
            self.port = self._server.sockets[0].getsockname()[1]
            self._started.set()
            with contextlib.suppress(asyncio.CancelledError):
                await self._server.serve_forever()

        asyncio.run(serve())

    async def _handle(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(client_reader.readuntil(b"\r\n"), 30)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ConnectionError):
            client_writer.close()
            return
        request_line = head.decode("latin-1").strip()
        path = request_line.split()[1] if len(request_line.split()) > 1 else ""
        for port in self.order_for(path):
            try:
                backend_reader, backend_writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                continue  # a dead backend: the next one takes the connection
            self.routes.append(Route(request_line, port, time.time()))
            break
        else:
            self.refused.append(request_line)
            client_writer.close()
            return
        backend_writer.write(head)
        await asyncio.gather(
            _pipe(client_reader, backend_writer, client_writer),
            _pipe(backend_reader, client_writer, backend_writer),
        )


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, other: asyncio.StreamWriter) -> None:
    """Copy until EOF or an error on either side, then close both ends."""
    try:
        while chunk := await reader.read(65536):
            writer.write(chunk)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        for end in (writer, other):
            with contextlib.suppress(Exception):
                end.close()
