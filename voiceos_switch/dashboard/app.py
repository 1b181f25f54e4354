"""The dashboard's ASGI app: token login, the JSON API, the live event stream
(server-sent events) and the static front end.

Nothing but the login page and its stylesheet is served without the token:
not the calls, not a transcript, not a recording. A browser signs in once
with the token and gets a session cookie (HttpOnly, SameSite=Strict, signed
with the token, 12 hours); scripts may send ``Authorization: Bearer <token>``
instead. A wrong token waits half a second before it is refused.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import (
    FileResponse,
    JSONResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from .. import log
from ..records.store import Store
from . import views

logger = log.get(__name__)

STATIC = Path(__file__).parent / "static"
#: SIP.js for the browser phone, an npm package (pinned in phone/package.json;
#: its ES modules load in the browser as they are, no build step)
VENDOR = Path(__file__).parent / "phone" / "node_modules" / "sip.js" / "lib"
COOKIE = "voiceos_dashboard"
SESSION_S = 12 * 3600
#: a viewer with nothing new gets a comment line this often (keeps proxies open)
HEARTBEAT_S = 15.0
#: while the live source is away, viewers hear how it is this often
STATUS_EVERY_S = 1.0
#: a refused token waits this long
REFUSE_DELAY_S = 0.5
#: paths open without the token
OPEN = ("/login", "/static/style.css")


class Sessions:
    """Signed, expiring session cookies: the token signs them, so a new
    token ends every session."""

    def __init__(self, token: str) -> None:
        self._key = hashlib.sha256(b"voiceos-dashboard-session\0" + token.encode()).digest()
        self._token = token

    def token_ok(self, given: str) -> bool:
        return hmac.compare_digest(given.encode(), self._token.encode())

    def issue(self, now: float | None = None) -> str:
        issued = str(int(now if now is not None else time.time()))
        mac = hmac.new(self._key, issued.encode(), hashlib.sha256).hexdigest()
        return f"{issued}.{mac}"

    def valid(self, cookie: str | None, now: float | None = None) -> bool:
        if not cookie or "." not in cookie:
            return False
        issued, _, mac = cookie.partition(".")
        want = hmac.new(self._key, issued.encode(), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(mac.encode(), want.encode()):
            return False
        try:
            age = (now if now is not None else time.time()) - int(issued)
        except ValueError:
            return False
        return 0 <= age < SESSION_S


def create_app(
    store: Callable[[], Store],
    feed: Any,
    token: str,
    *,
    variants: Sequence[str] = (),
    secure_cookie: bool = False,
    live: Callable[[], list[dict[str, Any]]] | None = None,
    phone: dict[str, str] | None = None,
) -> Starlette:
    """The dashboard over ``store`` (made on first use) and ``feed`` (a
    :class:`~.feed.LiveFeed` or :class:`~.feed.StreamFeed`). ``variants``:
    the agent's variant names (the first is the baseline). ``live``: the
    calls in progress, where the dashboard runs inside the bridge. ``phone``:
    the browser phone's SIP account (:func:`~voiceos_switch.dashboard.phone_config`),
    handed only to signed-in pages."""
    sessions = Sessions(token)
    # the page may open the PBX's SIP WebSocket and play what it recorded
    csp = (
        "default-src 'self'; media-src 'self' blob:; style-src 'self'; script-src 'self'; "
        f"connect-src 'self'{' ' + phone['origin'] if phone else ''}; frame-ancestors 'none'"
    )
    made: list[Store] = []

    def the_store() -> Store:
        if not made:
            made.append(store())
        return made[0]

    async def in_thread(fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.to_thread(fn, the_store(), *args)

    def signed_in(request: Request) -> bool:
        header = request.headers.get("authorization", "")
        if header.startswith("Bearer "):
            return sessions.token_ok(header[7:].strip())
        return sessions.valid(request.cookies.get(COOKIE))

    async def guard(request: Request) -> Response | None:
        if signed_in(request):
            return None
        if request.url.path.startswith("/api/"):
            return JSONResponse({"error": "sign in with the dashboard token"}, status_code=401)
        return RedirectResponse("/login", status_code=303)

    async def login_page(request: Request) -> Response:
        if request.method == "POST":
            body = parse_qs((await request.body()).decode(errors="replace"))
            given = (body.get("token") or [""])[0].strip()
            if sessions.token_ok(given):
                response = RedirectResponse("/", status_code=303)
                response.set_cookie(
                    COOKIE,
                    sessions.issue(),
                    max_age=SESSION_S,
                    httponly=True,
                    samesite="strict",
                    secure=secure_cookie,
                )
                logger.info(log.kv(event="dashboard_sign_in", client=_client(request)))
                return response
            await asyncio.sleep(REFUSE_DELAY_S)
            logger.warning(log.kv(event="dashboard_token_refused", client=_client(request)))
            return _page(
                "login.html", csp, status=401, message="That token is not this dashboard's."
            )
        return _page("login.html", csp)

    async def logout(request: Request) -> Response:
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(COOKIE)
        return response

    async def index(request: Request) -> Response:
        return (await guard(request)) or _page("index.html", csp)

    async def api_phone(request: Request) -> Response:
        if (refused := await guard(request)) is not None:
            return refused
        if phone is None:
            return JSONResponse(
                {
                    "enabled": False,
                    "reason": "no SIP account for the browser phone "
                    "(set VOICEOS_WEBPHONE_PASSWORD, or run `voiceos-switch lab up`)",
                }
            )
        if not (VENDOR / "index.js").exists():
            return JSONResponse(
                {
                    "enabled": False,
                    "reason": "SIP.js is not installed: run scripts/setup "
                    f"(or npm ci --prefix {VENDOR.parents[2]})",
                }
            )
        return JSONResponse({"enabled": True, **{k: v for k, v in phone.items() if k != "origin"}})

    async def api_calls(request: Request) -> Response:
        if (refused := await guard(request)) is not None:
            return refused
        limit = _int(request.query_params.get("limit"), 50, 1, 500)
        stored = await in_thread(views.calls, limit)
        return JSONResponse({"calls": stored, "live": live() if live else None})

    async def api_call(request: Request) -> Response:
        if (refused := await guard(request)) is not None:
            return refused
        got = await in_thread(views.call, request.path_params["call_id"])
        if got is None:
            return JSONResponse({"error": "no such call (yet: it is stored at hangup)"}, 404)
        return JSONResponse(got)

    async def api_audio(request: Request) -> Response:
        if (refused := await guard(request)) is not None:
            return refused
        path = await in_thread(
            views.recording_path, request.path_params["call_id"], request.path_params["leg"]
        )
        if path is None:
            return JSONResponse({"error": "no recording of that leg"}, status_code=404)
        return FileResponse(path, media_type="audio/wav")

    async def api_overview(request: Request) -> Response:
        if (refused := await guard(request)) is not None:
            return refused
        return JSONResponse(await in_thread(views.overview))

    async def api_variants(request: Request) -> Response:
        if (refused := await guard(request)) is not None:
            return refused
        return JSONResponse(await in_thread(views.variants, list(variants)))

    async def api_events(request: Request) -> Response:
        """Server-sent events: every event after ``Last-Event-ID`` (or
        ``?after=``), then new ones as they come."""
        if (refused := await guard(request)) is not None:
            return refused
        after = request.headers.get("last-event-id") or request.query_params.get("after")

        def status(problem: str | None) -> bytes:
            body = json.dumps({"source": feed.source, "problem": problem})
            return f"event: status\ndata: {body}\n\n".encode()

        async def stream() -> AsyncIterator[bytes]:
            nonlocal after
            problem = getattr(feed, "error", None)
            yield b"retry: 2000\n\n" + status(problem)
            while not feed.closed:
                got = await feed.read_text(after, STATUS_EVERY_S if problem else HEARTBEAT_S)
                now = getattr(feed, "error", None)
                if now != problem:  # the source went away, or came back
                    problem = now
                    yield status(problem)
                if not got:
                    if feed.closed:
                        return
                    yield b": ping\n\n"
                    continue
                yield "".join(f"id: {i}\ndata: {text}\n\n" for i, text in got).encode()
                after = got[-1][0]

        return StreamingResponse(
            stream(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    async def static_guard(scope: Any, receive: Any, send: Any) -> None:
        request = Request(scope, receive)
        if request.url.path not in OPEN and not signed_in(request):
            await JSONResponse({"error": "sign in first"}, status_code=401)(scope, receive, send)
            return
        await static(scope, receive, send)

    static = StaticFiles(directory=STATIC)
    vendor = StaticFiles(directory=VENDOR, check_dir=False)

    async def vendor_guard(scope: Any, receive: Any, send: Any) -> None:
        if not signed_in(Request(scope, receive)):
            await JSONResponse({"error": "sign in first"}, status_code=401)(scope, receive, send)
            return
        await vendor(scope, receive, send)

    app = Starlette(
        routes=[
            Route("/", index),
            Route("/login", login_page, methods=["GET", "POST"]),
            Route("/logout", logout, methods=["POST", "GET"]),
            Route("/api/calls", api_calls),
            Route("/api/calls/{call_id}", api_call),
            Route("/api/calls/{call_id}/audio/{leg}", api_audio),
            Route("/api/overview", api_overview),
            Route("/api/variants", api_variants),
            Route("/api/events", api_events),
            Route("/api/phone", api_phone),
            Mount("/static", app=static_guard),
            Mount("/vendor/sip.js", app=vendor_guard),
        ]
    )
    return app


def _page(name: str, csp: str, status: int = 200, message: str = "") -> Response:
    html = (STATIC / name).read_text()
    html = html.replace("{{message}}", message)
    return Response(
        html,
        status_code=status,
        media_type="text/html",
        headers={
            "Cache-Control": "no-store",
            "Content-Security-Policy": csp,
            "X-Content-Type-Options": "nosniff",
        },
    )


def _client(request: Request) -> str:
    return request.client.host if request.client else "-"


def _int(raw: str | None, default: int, lo: int, hi: int) -> int:
    try:
        return max(lo, min(hi, int(raw))) if raw is not None else default
    except ValueError:
        return default
