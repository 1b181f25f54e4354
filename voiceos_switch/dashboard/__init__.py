"""The live dashboard: calls as they happen, every call after it, prompt
variants compared. Served by ``voiceos-switch dashboard`` (every bridge's
calls, from the Redis Stream and the store) or by the bridge itself with
``VOICEOS_DASHBOARD`` (its own calls; no Redis needed)."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import socket
import sys
from collections.abc import Iterator
from typing import Any

from ..errors import ConfigurationError
from ..settings import Settings, is_loopback, split_hostport

#: where the dashboard listens unless told
DEFAULT_LISTEN = "127.0.0.1:8089"


def resolve_token(settings: Settings, host: str) -> tuple[str, bool]:
    """The dashboard's token and whether it was made up now: none is set
    and the dashboard is on loopback, so one is generated for this run
    (there is no default token). Beyond loopback a token must be set."""
    if settings.dashboard_token is not None:
        token = settings.dashboard_token.get_secret_value()
        if len(token) < 16:
            raise ConfigurationError(
                "VOICEOS_DASHBOARD_TOKEN is too short: use 16 characters or more "
                "(python -c 'import secrets; print(secrets.token_urlsafe(24))')"
            )
        return token, False
    if not is_loopback(host):
        raise ConfigurationError(
            f"refusing to serve the dashboard on {host} without a token: set "
            "VOICEOS_DASHBOARD_TOKEN (16 characters or more), or listen on 127.0.0.1"
        )
    return secrets.token_urlsafe(24), True


def announce(host: str, port: int, token: str, generated: bool) -> None:
    """Where to sign in, printed for the person who started it."""
    shown = host if ":" not in host else f"[{host}]"
    print(f"[dashboard] http://{shown}:{port}/", file=sys.stderr, flush=True)
    if generated:
        print(
            f"[dashboard] sign in with the token {token} (made for this run; set "
            "VOICEOS_DASHBOARD_TOKEN to keep one)",
            file=sys.stderr,
            flush=True,
        )


def phone_config(settings: Settings) -> dict[str, str] | None:
    """What the browser phone needs to call the agent through the PBX, or None
    when no SIP password for it is configured."""
    if settings.webphone_password is None:
        return None
    from urllib.parse import urlsplit

    ws = settings.webphone_ws or f"ws://127.0.0.1:{settings.asterisk_http_port}/ws"
    parts = urlsplit(ws)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise ConfigurationError(f"VOICEOS_WEBPHONE_WS={ws!r}: a ws:// or wss:// address")
    domain = parts.hostname
    return {
        "ws": ws,
        "origin": f"{parts.scheme}://{parts.netloc}",
        "user": settings.webphone_user,
        "password": settings.webphone_password.get_secret_value(),
        "domain": domain,
        "number": settings.webphone_number,
    }


class _QuietServer:
    """uvicorn, run as one task of a process that handles its own signals."""

    def __init__(self, app: Any, host: str, port: int) -> None:
        import uvicorn

        class Server(uvicorn.Server):
            @contextlib.contextmanager
            def capture_signals(self) -> Iterator[None]:
                yield

        config = uvicorn.Config(
            app,
            host=host,
            port=port,
            log_level="warning",
            lifespan="off",
            access_log=False,
            timeout_graceful_shutdown=2,
        )
        self.server = Server(config)
        #: what the dashboard shows live (set by whoever serves it)
        self.feed: Any = None
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> int:
        # bound here, so a port in use is an OSError for the caller to report
        # (uvicorn itself would exit the process)
        config = self.server.config
        family = socket.AF_INET6 if ":" in config.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((config.host, config.port))
        except OSError:
            sock.close()
            raise
        sock.set_inheritable(True)
        self.task = asyncio.create_task(self.server.serve(sockets=[sock]), name="dashboard")
        while not self.server.started:
            if self.task.done():
                self.task.result()  # the reason it could not start
                raise OSError("the dashboard did not start")
            await asyncio.sleep(0.02)
        return self.port

    @property
    def port(self) -> int:
        for server in self.server.servers:
            for sock in server.sockets:
                return int(sock.getsockname()[1])
        return int(self.server.config.port)

    async def close(self) -> None:
        self.server.should_exit = True
        if self.task is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(self.task, 5.0)


async def start_server(app: Any, listen: str) -> _QuietServer:
    """Serve ``app`` at ``listen`` (``host:port``; port 0 picks a free one)."""
    host, port = split_hostport(listen)
    server = _QuietServer(app, host, port)
    await server.start()
    return server
