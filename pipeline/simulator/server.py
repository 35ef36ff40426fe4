"""Serving the simulator with uvicorn: in a background thread (tests, ``--simulate``) or in the foreground.

Port 0 picks a free loopback port; the socket is bound here so the port is known
before the server starts, and ``start()`` returns only once it is accepting.
"""

from __future__ import annotations

import logging
import socket
import threading

import uvicorn

from .app import SimulatorApp


class _QuietAbortFilter(logging.Filter):
    """The 'reset' fault aborts responses on purpose; uvicorn would log each as an error."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not ("Exception in ASGI application" in message or "without completing response" in message)


def _bind(host: str, port: int) -> socket.socket:
    # proto must be IPPROTO_TCP: asyncio sets TCP_NODELAY on accepted sockets only
    # then, and without it every response (headers, then body) waits ~40 ms on
    # Nagle + the client's delayed ACK.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.setblocking(False)
    return sock


class _Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, started: threading.Event) -> None:
        super().__init__(config)
        self._started_event = started

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        self._started_event.set()


class SimulatorServer:
    """``with SimulatorServer(app) as sim: sim.base_url`` — a real HTTP server on 127.0.0.1."""

    def __init__(
        self, app: SimulatorApp, *, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning"
    ) -> None:
        self.app = app
        self._sock = _bind(host, port)
        self.host, self.port = self._sock.getsockname()[:2]
        self._started = threading.Event()
        config = uvicorn.Config(
            app,
            log_level=log_level,
            access_log=False,
            lifespan="on",
            http="httptools",
            loop="asyncio",
            backlog=2048,
            timeout_keep_alive=30,
        )
        self._server = _Server(config, self._started)
        self._thread: threading.Thread | None = None
        logging.getLogger("uvicorn.error").addFilter(_QuietAbortFilter())

    @property
    def root_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        """The OpenAI-style base URL (``/v1``); the azure profile serves ``/openai/...`` under ``root_url``."""
        return f"{self.root_url}/v1"

    def start(self, *, timeout_s: float = 10.0) -> SimulatorServer:
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._sock]}, name="caption-simulator", daemon=True
        )
        self._thread.start()
        if not self._started.wait(timeout_s):
            raise RuntimeError("the simulator did not start listening in time")
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._sock.close()

    def serve_forever(self) -> None:
        """Foreground: returns on Ctrl-C (uvicorn handles the signal)."""
        self._server.run(sockets=[self._sock])

    def __enter__(self) -> SimulatorServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
