"""The dashboard's server: nothing without the token, sessions that cannot be
forged, the API over stored calls, the live feed that a reconnecting viewer
resumes, the dashboard served by a bridge during a call, and the A/B
comparison's statistics."""

from __future__ import annotations

import asyncio
import http.cookiejar
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from tests.unit.test_emotion_calls import CALM, REPLIES, clips, run_call, scripted_agent
from tests.unit.test_freeswitch_faults import bridge, until
from tests.unit.test_records import record as stored_record
from voiceos_switch import Agent, Call, Variant
from voiceos_switch import events as ev
from voiceos_switch import variants as ab
from voiceos_switch.dashboard import phone_config, resolve_token, start_server
from voiceos_switch.dashboard.app import SESSION_S, Sessions, create_app
from voiceos_switch.dashboard.feed import LiveFeed
from voiceos_switch.errors import ConfigurationError
from voiceos_switch.records.store import Store
from voiceos_switch.settings import Settings

TOKEN = "unit-dashboard-token-0123456789"


def record(i: int, variant: str | None = None, duration: float = 30.0, **extra: Any) -> dict:
    """A stored call: one question, one answered turn, one emotion reading
    (and a provisional one the dashboard must not count)."""
    t = 1_790_000_000.0 + i * 100
    stages = {"endpoint": 180.0, "confirmed": 200.0, "stt_final": 210.0}
    stages |= {"llm_first_token": 320.0, "tts_first_audio": 380.0}
    reading = {"t": 2.0, "turn": 1, "text": "where is my order", "confidence": 0.6, "cues": []}
    scores = {"frustrated": 0.1 * (i % 5), "confused": 0.0, "urgent": 0.2, "satisfied": 0.5}
    return stored_record(
        f"call-{i:03d}",
        ["where is my order"],
        variant=variant,
        caller="15550100",
        started_at=t,
        ended_at=t + duration,
        duration_s=duration,
        latency=[{"turn": 1, **stages, "first_frame_sent": 400.0 + 10 * i, "interrupted": False}],
        emotions=[
            {**reading, "final": True, "scores": scores, "announced": []},
            {
                **reading,
                "t": 1.0,
                "final": False,
                "scores": dict.fromkeys(scores, 1.0),
                "announced": [],
            },
        ],
        cost={"total": 0.01 * duration / 30, "per_minute": 0.02},
        **extra,
    )


class Client:
    """A browser's view: a cookie jar and plain HTTP."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar))

    def _open(
        self, path: str, data: bytes | None, headers: dict[str, str]
    ) -> tuple[int, dict, bytes]:
        request = urllib.request.Request(self.base + path, data=data, headers=headers)
        try:
            with self.opener.open(request, timeout=30) as r:
                return r.status, dict(r.headers), r.read()
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers), e.read()

    async def get(self, path: str, **headers: str) -> tuple[int, dict, bytes]:
        return await asyncio.to_thread(self._open, path, None, headers)

    async def login(self, token: str) -> tuple[int, dict, bytes]:
        body = urllib.parse.urlencode({"token": token}).encode()
        return await asyncio.to_thread(self._open, "/login", body, {})


async def served(store: Store, feed: Any = None, **options: Any) -> Any:
    app = create_app(lambda: store, feed or LiveFeed(), TOKEN, **options)
    return await start_server(app, "127.0.0.1:0")


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store(f"sqlite:///{tmp_path / 'calls.db'}")
    s.migrate()
    return s


async def test_nothing_without_the_token(store: Store) -> None:
    store.save_call(record(1))
    server = await served(store)
    try:
        c = Client(f"http://127.0.0.1:{server.port}")
        for path in (
            "/api/calls",
            "/api/calls/call-001",
            "/api/overview",
            "/api/variants",
            "/api/events",
            "/api/calls/call-001/audio/caller",
            "/api/phone",
            "/static/app.js",
            "/static/phone.js",
            "/vendor/sip.js/index.js",
        ):
            status, _, body = await c.get(path)
            assert status == 401, path
            assert b"where is my order" not in body
        status, headers, _ = await c.get("/")
        assert status == 200 and "sign in" in (await c.get("/login"))[2].decode().lower()
        # a wrong token is refused, and gets no session
        status, _, body = await c.login("not-the-token-at-all")
        assert status == 401 and b"not this dashboard" in body
        assert (await c.get("/api/calls"))[0] == 401
        # a forged cookie is no session
        c.jar.set_cookie(_cookie("voiceos_dashboard", f"{int(time.time())}.{'0' * 64}"))
        assert (await c.get("/api/calls"))[0] == 401
        # a script may send the token as a bearer token
        status, _, body = await c.get("/api/calls", Authorization=f"Bearer {TOKEN}")
        assert status == 200 and json.loads(body)["calls"][0]["id"] == "call-001"
    finally:
        await server.close()


def _cookie(name: str, value: str) -> http.cookiejar.Cookie:
    return http.cookiejar.Cookie(
        0,
        name,
        value,
        None,
        False,
        "127.0.0.1",
        False,
        False,
        "/",
        True,
        False,
        None,
        False,
        None,
        None,
        {},
    )


async def test_sign_in_gives_a_session_and_the_api_answers(store: Store, tmp_path: Path) -> None:
    wav = tmp_path / "call-002-caller.wav"
    wav.write_bytes(b"RIFF" + bytes(2000))
    for i in range(6):
        store.save_call(record(i, "A" if i % 2 else "B"))
    store.save_call(record(7, recordings={"caller": str(wav), "agent": str(tmp_path / "gone.wav")}))
    store.save_analysis(
        "call-001",
        "summary",
        {"summary": "Asked about an order.", "disposition": "handled", "action_items": []},
    )
    server = await served(store, variants=["A", "B"])
    try:
        c = Client(f"http://127.0.0.1:{server.port}")
        status, headers, _ = await c.login(TOKEN)
        assert status == 200  # redirected to the page
        cookie = next(k for k in c.jar if k.name == "voiceos_dashboard")
        assert cookie.has_nonstandard_attr("HttpOnly") or "httponly" in str(headers).lower()
        page = (await c.get("/"))[2].decode()
        assert "Live calls" in page and "/static/app.js" in page
        calls = json.loads((await c.get("/api/calls"))[2])["calls"]
        assert [r["id"] for r in calls][:2] == ["call-007", "call-005"]  # newest first
        row = next(r for r in calls if r["id"] == "call-001")
        assert row["disposition"] == "handled" and row["latency_ms"] == 410
        one = json.loads((await c.get("/api/calls/call-001"))[2])
        assert one["analyses"]["summary"]["result"]["summary"] == "Asked about an order."
        assert one["heat"]["turns"][0]["scores"] == [0.1, 0.0, 0.2, 0.5]  # final readings only
        assert (await c.get("/api/calls/nope"))[0] == 404
        # recordings: only the legs the record names, and only files that exist
        detail = json.loads((await c.get("/api/calls/call-007"))[2])
        assert detail["record"]["recordings"] == ["caller"]
        status, headers, body = await c.get("/api/calls/call-007/audio/caller")
        assert status == 200 and headers["content-type"] == "audio/wav" and len(body) == 2004
        for leg in ("agent", "..%2F..%2Fetc%2Fpasswd", "mixed"):
            assert (await c.get(f"/api/calls/call-007/audio/{leg}"))[0] == 404, leg
        overview = json.loads((await c.get("/api/overview"))[2])
        assert overview["calls"] == 7 and overview["latency"]["turns"] == 7
        assert sum(b["turns"] for b in overview["latency"]["histogram"]) == 7
        assert overview["latency"]["stages_p50_ms"]["llm_first_token"] == 320
        assert overview["cost"]["per_minute"] == pytest.approx(0.02, abs=1e-6)
        heat = overview["heatmap"]
        assert heat["readings"][0] == 7  # partial readings are not counted
        assert heat["mean"][heat["states"].index("satisfied")][0] == 0.5
        compared = json.loads((await c.get("/api/variants"))[2])
        assert [v["name"] for v in compared["variants"]] == ["A", "B"]
        assert compared["comparisons"][0]["baseline"] == "A"
        # signing out ends the session
        await c.get("/logout")
        assert (await c.get("/api/calls"))[0] == 401
    finally:
        await server.close()


def test_sessions_expire_and_a_new_token_ends_them() -> None:
    s = Sessions(TOKEN)
    cookie = s.issue(now=1000.0)
    assert s.valid(cookie, now=1000.0 + SESSION_S - 1)
    assert not s.valid(cookie, now=1000.0 + SESSION_S + 1)
    assert not Sessions(TOKEN + "x").valid(cookie, now=1001.0)
    assert not s.valid(cookie.replace(".", "0."), now=1001.0)
    assert not s.valid(None) and not s.valid("garbage")


def test_the_token_is_never_a_default() -> None:
    first, made = resolve_token(Settings(), "127.0.0.1")
    assert made and len(first) >= 24 and resolve_token(Settings(), "127.0.0.1")[0] != first
    with pytest.raises(ConfigurationError, match="VOICEOS_DASHBOARD_TOKEN"):
        resolve_token(Settings(), "0.0.0.0")
    with pytest.raises(ConfigurationError, match="too short"):
        resolve_token(Settings(dashboard_token=SecretStr("short")), "127.0.0.1")
    assert resolve_token(Settings(dashboard_token=SecretStr(TOKEN)), "0.0.0.0") == (TOKEN, False)


async def test_a_viewer_resumes_from_the_last_event_it_saw() -> None:
    feed = LiveFeed(keep=5)
    # a first viewer of an empty feed waits (it does not spin on empty answers)
    first = asyncio.create_task(feed.read(None, timeout=30))
    await asyncio.sleep(0.05)
    assert not first.done()
    for i in range(4):
        feed.publish(ev.Dtmf("c1", str(i)))
    assert [e["digit"] for _, e in await asyncio.wait_for(first, 5)] == ["0", "1", "2", "3"]
    assert [e["digit"] for _, e in await feed.read(None)] == ["0", "1", "2", "3"]
    assert [i for i, _ in await feed.read("2")] == ["3", "4"]
    # a viewer that has everything waits for the next one
    waiting = asyncio.create_task(feed.read("4", timeout=30))
    await asyncio.sleep(0.05)
    assert not waiting.done()
    feed.publish(ev.Dtmf("c1", "9"))
    assert [e["digit"] for _, e in await asyncio.wait_for(waiting, 5)] == ["9"]
    # further behind than what is kept: everything kept
    for _ in range(5):
        feed.publish(ev.Dtmf("c1", "x"))
    assert len(await feed.read("1")) == 5
    await feed.close()
    assert await feed.read("10", timeout=30) == []  # closed: nobody waits


class Viewer:
    """The dashboard's event stream as a browser reads it (server-sent events)."""

    def __init__(self, port: int, after: str | None = None) -> None:
        self.port, self.after = port, after

    async def __aenter__(self) -> Viewer:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        resume = f"Last-Event-ID: {self.after}\r\n" if self.after else ""
        self.writer.write(
            f"GET /api/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
            f"{resume}\r\n".encode()
        )
        await self.writer.drain()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.writer.close()

    async def next(self, timeout: float = 10.0) -> tuple[str, str, dict]:
        """The next event: (its type, its id, its data)."""

        async def read() -> tuple[str, str, dict]:
            kind, entry_id = "message", ""
            while True:
                line = (await self.reader.readline()).decode()
                if not line:
                    raise ConnectionError("the event stream ended")
                if line.startswith("event: "):
                    kind = line[7:].strip()
                elif line.startswith("id: "):
                    entry_id = line[4:].strip()
                elif line.startswith("data: "):
                    return kind, entry_id, json.loads(line[6:])

        return await asyncio.wait_for(read(), timeout)

    async def next_event(self, timeout: float = 10.0) -> tuple[str, dict]:
        """The next call event (status lines skipped)."""
        while True:
            kind, entry_id, data = await self.next(timeout)
            if kind == "message":
                return entry_id, data


async def test_the_event_stream_over_http_replays_then_follows(store: Store) -> None:
    feed = LiveFeed()
    feed.publish(ev.CallStarted("c1", "asterisk", "15550100", "100"))
    feed.publish(ev.Transcript("c1", "caller", "hello", time.time()))
    server = await served(store, feed)
    try:
        async with Viewer(server.port, after="1") as viewer:
            kind, _, status = await viewer.next()
            assert kind == "status" and status == {"source": "bridge", "problem": None}
            first = await viewer.next_event()
            assert first[0] == "2" and first[1]["text"] == "hello"  # after the id it gave
            feed.publish(ev.CallEnded("c1", "hangup", 3.0))
            second = await viewer.next_event()
            assert second[0] == "3" and second[1]["kind"] == "call_ended"
    finally:
        await feed.close()
        await server.close()


async def test_the_bridge_serves_its_own_calls_live(tmp_path: Path) -> None:
    """A bridge with VOICEOS_DASHBOARD: the call is listed while it runs and
    its events are on the stream; with variants, the call has one."""
    audio = await clips()
    ended: list[Call] = []
    seen_live: list[dict] = []

    def make(s: Settings) -> Agent:
        s = s.model_copy(update={"dashboard": "127.0.0.1:0", "dashboard_token": SecretStr(TOKEN)})
        agent, _ = scripted_agent(s, audio, REPLIES, ended)
        agent.variants = [Variant("A"), Variant("B")]
        return agent

    async with bridge(tmp_path, make) as (standin, agent):
        c = Client(f"http://127.0.0.1:{agent.dashboard.port}")
        assert (await c.get("/api/calls"))[0] == 401

        async def watch() -> None:
            while not ended:
                got = json.loads((await c.get("/api/calls", Authorization=f"Bearer {TOKEN}"))[2])
                seen_live.extend(got["live"])
                await asyncio.sleep(0.05)

        watcher = asyncio.create_task(watch())
        await run_call(standin, [audio[CALM]])
        await until(lambda: ended, 30, "the call never ended")
        await watcher
        events = await agent.dashboard.feed.read(None)
    call = ended[0]
    assert call.variant in ("A", "B")
    assert any(r["id"] == call.id and r["variant"] == call.variant for r in seen_live)
    kinds = [e["kind"] for _, e in events if e["call_id"] == call.id]
    assert kinds[0] == "call_started" and kinds[-1] == "call_ended"
    assert "transcript" in kinds and "caller_speech_started" in kinds
    stored = agent.store.get_call(call.id)
    assert stored is not None and stored["variant"] == call.variant


def test_variants_split_by_share_and_keep_a_call_on_one() -> None:
    vs = [Variant("A", share=3), Variant("B", share=1)]
    got = Counter(ab.pick(f"call-{i}", vs).name for i in range(8000))  # type: ignore[union-attr]
    assert got["A"] / 8000 == pytest.approx(0.75, abs=0.02)
    assert all(ab.pick("same-call", vs) == ab.pick("same-call", vs) for _ in range(5))
    assert ab.pick("x", []) is None
    for bad in ([Variant("A"), Variant("A")], [Variant("A", share=0)], [Variant("", share=1)]):
        with pytest.raises(ValueError):
            ab.check(bad)
    with pytest.raises(ConfigurationError, match="variant 'B'"):
        Agent(variants=[Variant("A"), Variant("B", style="shouty")])


def test_the_tests_agree_with_reference_values() -> None:
    # Fisher's exact test on [[8, 2], [1, 5]]: 0.0350 two-sided (R: fisher.test)
    assert ab.fisher(8, 10, 1, 6) == pytest.approx(0.034965, abs=1e-5)
    assert ab.fisher(3, 4, 1, 4) == pytest.approx(0.485714, abs=1e-5)
    # Student's t: t = 2.228 at 10 df is the 5 % two-sided point
    assert ab.t_two_sided_p(2.228, 10) == pytest.approx(0.05, abs=2e-4)
    assert ab.t_two_sided_p(0.0, 7) == pytest.approx(1.0)
    # Welch on two samples: t = 3.818 on 7.01 df (worked by hand), p = 0.0066
    a, b = [19.1, 20.3, 18.7, 21.0, 19.9], [22.4, 21.8, 23.9, 20.9, 24.1]
    assert ab.welch(a, b) == pytest.approx(0.0066, abs=3e-4)
    assert ab.welch([1.0], [2.0, 3.0]) is None


def test_a_real_difference_is_called_real_and_a_small_one_is_not() -> None:
    pairs: list[tuple[dict, dict]] = []
    for i in range(40):  # B's calls are a minute longer, and hand over far more often
        pairs.append((record(i, "A", 60 + i % 7, transfers=["op"] if i % 10 == 0 else []), {}))
        pairs.append((record(100 + i, "B", 120 + i % 7, transfers=["op"] if i % 2 else []), {}))
    out = ab.compare(pairs, ["A", "B"])
    tests = out["comparisons"][0]["tests"]
    assert tests["duration_s"]["real"] and tests["duration_s"]["difference"] == 60
    assert tests["escalation"]["real"] and tests["escalation"]["difference"] == pytest.approx(0.4)
    assert [v["escalation"]["k"] for v in out["variants"]] == [4, 20]
    # the same calls, told apart by chance alone: not real, and how many it would take
    same = [(record(i, "A" if i % 2 else "B", 60 + (i * 7) % 11), {}) for i in range(30)]
    verdict = ab.compare(same, ["A", "B"])["comparisons"][0]["tests"]["duration_s"]
    assert not verdict["real"] and "calls per variant" in verdict["says"]
    assert verdict["calls_needed"] > 15
    # two calls are too few to say anything
    few = ab.compare([(record(1, "A"), {}), (record(2, "B"), {})], ["A", "B"])
    assert few["comparisons"][0]["tests"]["duration_s"]["says"].startswith("too few")


async def test_the_browser_phone_gets_its_sip_account_only_when_signed_in(store: Store) -> None:
    settings = Settings(
        webphone_password=SecretStr("sip-secret-for-the-phone"), asterisk_http_port=8188
    )
    phone = phone_config(settings)
    assert phone is not None and phone["ws"] == "ws://127.0.0.1:8188/ws"
    server = await served(store, phone=phone)
    try:
        c = Client(f"http://127.0.0.1:{server.port}")
        status, _, body = await c.get("/api/phone")
        assert status == 401 and b"sip-secret" not in body
        await c.login(TOKEN)
        status, headers, _ = await c.get("/")
        # the page may open the PBX's WebSocket, and nothing else beyond itself
        assert "connect-src 'self' ws://127.0.0.1:8188;" in headers["content-security-policy"]
        got = json.loads((await c.get("/api/phone"))[2])
        assert got == {
            "enabled": True,
            "ws": "ws://127.0.0.1:8188/ws",
            "user": "webphone",
            "password": "sip-secret-for-the-phone",
            "domain": "127.0.0.1",
            "number": "100",
        }
        status, headers, body = await c.get("/vendor/sip.js/index.js")
        assert status == 200 and "javascript" in headers["content-type"] and b"export" in body
    finally:
        await server.close()

    # without an account the phone says what to set, and the page opens no socket
    server = await served(store)
    try:
        c = Client(f"http://127.0.0.1:{server.port}")
        await c.login(TOKEN)
        got = json.loads((await c.get("/api/phone"))[2])
        assert got["enabled"] is False and "VOICEOS_WEBPHONE_PASSWORD" in got["reason"]
        assert "connect-src 'self';" in (await c.get("/"))[1]["content-security-policy"]
    finally:
        await server.close()
    with pytest.raises(ConfigurationError, match="ws:// or wss://"):
        phone_config(settings.model_copy(update={"webphone_ws": "http://pbx/ws"}))
