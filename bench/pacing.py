"""Outbound pacing under load: N concurrent calls on loopback, over AudioSocket
(the default) or the FreeSWITCH mod_audio_stream WebSocket (``--transport ws``).

The bridge runs in its own process (the real AudioSocketServer and frame
clock, with an agent that talks non-stop). A load generator in a second
process plays Asterisk: it opens N calls, sends 20 ms caller frames on its
own clock, and timestamps every frame the bridge sends back. Reported per N:

- interval jitter: |arrival gap - 20 ms| over all calls, p50 / p99 / max,
  as seen by the receiver (includes the receiver's own scheduling noise);
- bridge-side tick lateness (when the frame clock actually woke versus its
  schedule), p50 / p99 / max;
- bridge CPU (percent of one core) and resident memory per call.

Over the WebSocket the bridge does not send 20 ms frames: it hands
FreeSWITCH agent audio in messages that FreeSWITCH plays as files, keeping a
little ahead. There the receiver reports underruns instead of frame jitter:
a message that arrives after the previous one would have finished playing is
an audible gap (its length is reported), on top of FreeSWITCH's own seam.

    .venv/bin/python bench/pacing.py               # 1, 50, 200, 500 calls
    .venv/bin/python bench/pacing.py --calls 200 --seconds 20 --json out.json
    .venv/bin/python bench/pacing.py --transport ws --calls 200
    .venv/bin/python bench/pacing.py --calls 200 --subscriber slow

``--subscriber fast|slow``: every call also has an event bus on which each
caller frame publishes an event (50 a second a call, far more than a real
call publishes), with a subscriber that takes each at once (``fast``: the
cost of publishing itself) or a second over each (``slow``: it falls behind
at once and drops); the two must pace alike. ``--subscriber dashboard``: the same events go to
the live dashboard's feed, served by the dashboard's own server in the
bridge process, with two viewers reading the event stream (curl) and one
that connected and never reads.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

FRAME = 0.02
PHASES = 10


# --------------------------------------------------------------------------
# the bridge process
# --------------------------------------------------------------------------
WS_TOKEN = "bench-token-0123456789abcdef"


def serve(port: int, transport: str = "audiosocket", subscriber: str = "none") -> None:
    from voiceos_switch.audio import pacer as pacer_mod
    from voiceos_switch.audio.pcm import tone
    from voiceos_switch.transports.audiosocket import AudioSocketCall, AudioSocketServer
    from voiceos_switch.transports.audiostream import AudioStreamServer

    lateness: list[float] = []
    wakes: list[float] = []
    dropped_events: list[int] = []

    async def talk(call: AudioSocketCall) -> None:  # or a StreamCall: the same interface
        """An agent that never stops talking: the pacer always has audio."""
        speech = tone((440.0, 660.0), 1000, call.sample_rate)

        async def feed() -> None:
            while not call.ended:
                if call.pacer is not None and call.pacer.queued_frames < 25:
                    call.send_audio(speech)
                await asyncio.sleep(0.2)

        feeder = asyncio.create_task(feed())
        bus = None
        if subscriber == "dashboard":
            from voiceos_switch import events as ev

            bus = ev.EventBus(call.call_id)
            bus.subscribe(dashboard_feed[0].publish, "dashboard")
        elif subscriber != "none":
            from voiceos_switch import events as ev

            async def stuck(event: ev.Event) -> None:
                await asyncio.sleep(1.0)  # a viewer on a dead connection

            async def quick(event: ev.Event) -> None:
                return None

            bus = ev.EventBus(call.call_id)
            bus.subscribe(stuck if subscriber == "slow" else quick, subscriber, maxsize=100)
        frames = 0
        async for _ in call.events():
            if bus is not None:
                frames += 1
                bus.publish(ev.PartialTranscript(call.call_id, frames, "words so far"))
        feeder.cancel()
        if bus is not None:
            dropped_events.append(sum(s.dropped for s in bus.subscriptions))
            await bus.close()

    class MeasuredClock(pacer_mod.MonotonicClock):
        async def sleep_until(self, deadline: float) -> None:
            await super().sleep_until(deadline)
            now = time.monotonic()
            lateness.append(now - deadline)
            wakes.append(now)

    dashboard_feed: list[Any] = []

    async def start_dashboard() -> list[subprocess.Popen[bytes]]:
        import tempfile

        from voiceos_switch.dashboard import start_server
        from voiceos_switch.dashboard.app import create_app
        from voiceos_switch.dashboard.feed import LiveFeed
        from voiceos_switch.records.store import Store

        store = Store(f"sqlite:///{tempfile.mkdtemp()}/calls.db")
        store.migrate()
        dashboard_feed.append(LiveFeed())
        token = "bench-dashboard-token-0123456789"
        web = await start_server(create_app(lambda: store, dashboard_feed[0], token), "127.0.0.1:0")
        curl = f"exec curl -sN -H 'Authorization: Bearer {token}' http://127.0.0.1:{web.port}/api/events"
        return _spawn([f"{curl} > /dev/null", f"{curl} > /dev/null", f"{curl} | sleep 100000"])

    async def main() -> None:
        clock = pacer_mod.FrameClock(MeasuredClock())
        server: AudioSocketServer | AudioStreamServer
        if transport == "ws":
            # "inject": the receiver plays what it gets; no event socket needed
            server = AudioStreamServer(
                talk,
                WS_TOKEN,
                clock=clock,
                playback="inject",
                max_calls=10_000,
                handshake_timeout=30,
            )
        else:
            server = AudioSocketServer(talk, clock=clock, max_calls=10_000, handshake_timeout=30)
        await server.start("127.0.0.1", port)
        viewers = await start_dashboard() if subscriber == "dashboard" else []
        gc.freeze()  # as Agent.run does once its models are loaded
        print("ready", flush=True)
        loop = asyncio.get_running_loop()
        line = await loop.run_in_executor(None, sys.stdin.readline)
        while line.strip() == "reset":
            lateness.clear()
            wakes.clear()
            print("ok", flush=True)
            line = await loop.run_in_executor(None, sys.stdin.readline)
        if line.strip() == "stats":
            gaps = [abs(b - a - FRAME) for a, b in zip(wakes, wakes[1:], strict=False)]
            print(
                json.dumps(
                    {
                        "lateness_ms": _pcts(lateness, 1000.0),
                        "tick_jitter_ms": _pcts(gaps, 1000.0),
                        "reanchors": clock.reanchors,
                        "events_dropped": sum(dropped_events),
                    }
                ),
                flush=True,
            )
        await server.close()
        for viewer in viewers:
            os.killpg(viewer.pid, signal.SIGKILL)
        gc.unfreeze()

    asyncio.run(main())


def _spawn(commands: list[str]) -> list[subprocess.Popen[bytes]]:
    """The dashboard's viewers, in their own processes (the last never reads)."""
    return [subprocess.Popen(["sh", "-c", c], start_new_session=True) for c in commands]


def _pcts(values: list[float], scale: float = 1.0) -> dict[str, float]:
    if not values:
        return {"p50": 0.0, "p99": 0.0, "max": 0.0}
    v = sorted(values)
    return {
        "p50": round(v[len(v) // 2] * scale, 3),
        "p99": round(v[min(len(v) - 1, int(len(v) * 0.99))] * scale, 3),
        "max": round(v[-1] * scale, 3),
    }


# --------------------------------------------------------------------------
# the load generator (the PBX side)
# --------------------------------------------------------------------------
class FakeAsterisk(asyncio.Protocol):
    FRAME_BYTES = 3 + 320

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = 0
        self.arrivals: list[int] = []
        self.recording = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(b"\x01\x00\x10" + uuid.uuid4().bytes)

    def data_received(self, data: bytes) -> None:
        now = time.monotonic_ns()
        self.buf += len(data)
        while self.buf >= self.FRAME_BYTES:
            self.buf -= self.FRAME_BYTES
            if self.recording:
                self.arrivals.append(now)


async def send_phased(
    peers: list[Any],
    send: Callable[[Any], Awaitable[None]],
    record: Callable[[], None],
    seconds: float,
    warmup: float,
) -> None:
    """One caller frame per peer every 20 ms for warmup + seconds, on a
    drift-free schedule; ``record()`` once the warm-up is over. A PBX runs
    each channel on its own timer, so calls' frames arrive spread over the
    20 ms period, not in one burst: the peers go in 10 phase groups."""
    groups = [peers[g::PHASES] for g in range(PHASES)]
    step = FRAME / PHASES
    start = time.monotonic()
    end = start + warmup + seconds
    recording = False
    n = 0
    while True:
        n += 1
        deadline = start + n * step
        if deadline > end:
            return
        delay = deadline - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        if not recording and time.monotonic() - start >= warmup:
            recording = True
            record()
        for p in groups[n % PHASES]:
            await send(p)


async def load(port: int, calls: int, seconds: float, warmup: float) -> dict[str, object]:
    loop = asyncio.get_running_loop()
    peers: list[FakeAsterisk] = []
    for i in range(calls):
        _, proto = await loop.create_connection(FakeAsterisk, "127.0.0.1", port)
        peers.append(proto)
        if i % 50 == 49:
            await asyncio.sleep(0.01)
    caller_frame = b"\x10\x01\x40" + bytes(320)

    async def send(p: FakeAsterisk) -> None:
        if p.transport is not None:
            p.transport.write(caller_frame)

    def record() -> None:
        for p in peers:
            p.recording = True

    await send_phased(peers, send, record, seconds, warmup)
    for p in peers:
        p.recording = False
        if p.transport is not None:
            p.transport.close()
    jitter: list[float] = []
    frames = 0
    for p in peers:
        a = p.arrivals
        frames += len(a)
        jitter += [abs((b - x) / 1e6 - FRAME * 1000) for x, b in zip(a, a[1:], strict=False)]
    expected = calls * seconds / FRAME
    return {
        "jitter_ms": _pcts(jitter),
        "frames_received": frames,
        "frames_expected": int(expected),
    }


async def load_ws(port: int, calls: int, seconds: float, warmup: float) -> dict[str, object]:
    """FreeSWITCH's side: N streams of 20 ms frames; the agent's messages are
    timed as if played back to back on arrival."""
    import base64

    import websockets

    loop = asyncio.get_running_loop()
    conns = []
    for i in range(calls):
        ws = await websockets.connect(
            f"ws://127.0.0.1:{port}/{WS_TOKEN}", compression=None, max_size=2**22
        )
        meta = {"uuid": str(uuid.uuid4()), "rate": 8000, "mix": "mono"}
        await ws.send(json.dumps(meta))
        conns.append(ws)
        if i % 50 == 49:
            await asyncio.sleep(0.01)
    recording = False
    gaps: list[float] = []
    leads: list[float] = []
    messages = 0

    async def receive(ws: object) -> None:
        nonlocal messages
        play_end = 0.0
        async for raw in ws:  # type: ignore[attr-defined]
            now = loop.time()
            msg = json.loads(raw)
            seconds_of_audio = len(base64.b64decode(msg["data"]["audioData"])) / 2 / 8000
            if recording:
                messages += 1
                if play_end and now > play_end:
                    gaps.append((now - play_end) * 1000)
                elif play_end:
                    leads.append((play_end - now) * 1000)
            play_end = max(now, play_end) + seconds_of_audio

    receivers = [asyncio.create_task(receive(ws)) for ws in conns]
    frame = bytes(320)

    async def send(ws: Any) -> None:
        await ws.send(frame)

    def record() -> None:
        nonlocal recording
        recording = True

    await send_phased(conns, send, record, seconds, warmup)
    recording = False
    for ws in conns:
        await ws.close()
    await asyncio.gather(*receivers, return_exceptions=True)
    return {
        "underruns": len(gaps),
        "underrun_ms": _pcts(gaps),
        "lead_ms": _pcts(leads),
        "messages": messages,
        # comparable fields for the table
        "jitter_ms": _pcts(gaps),
        "frames_received": messages,
        "frames_expected": 0,
    }


def run_one(
    calls: int, seconds: float, port: int, transport: str = "audiosocket", subscriber: str = "none"
) -> dict[str, object]:
    import psutil

    env = dict(os.environ, PYTHONUNBUFFERED="1")
    bridge = subprocess.Popen(
        [sys.executable, __file__, "--serve", str(port), "--transport", transport]
        + ["--subscriber", subscriber],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert bridge.stdout is not None and bridge.stdin is not None
    if bridge.stdout.readline().strip() != "ready":
        raise SystemExit("bridge process failed to start")
    proc = psutil.Process(bridge.pid)
    rss_idle = proc.memory_info().rss
    warmup = 2.0

    async def measure() -> dict[str, object]:
        loader = load_ws if transport == "ws" else load
        task = asyncio.create_task(loader(port, calls, seconds, warmup))
        await asyncio.sleep(warmup)
        bridge.stdin.write("reset\n")  # type: ignore[union-attr]
        bridge.stdin.flush()  # type: ignore[union-attr]
        cpu0 = proc.cpu_times()
        t0 = time.monotonic()
        await asyncio.sleep(seconds * 0.9)
        cpu1 = proc.cpu_times()
        t1 = time.monotonic()
        rss = proc.memory_info().rss
        result = await task
        result["bridge_cpu_pct"] = round(
            ((cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)) / (t1 - t0) * 100, 1
        )
        result["bridge_rss_mb"] = round(rss / 2**20, 1)
        result["rss_per_call_kb"] = round((rss - rss_idle) / calls / 1024, 1)
        return result

    result = asyncio.run(measure())
    bridge.stdout.readline()  # "ok" after reset
    bridge.stdin.write("stats\n")
    bridge.stdin.flush()
    stats = json.loads(bridge.stdout.readline())
    bridge.wait(10)
    result.update(
        transport=transport,
        calls=calls,
        seconds=seconds,
        bridge_tick_lateness_ms=stats["lateness_ms"],
        bridge_tick_jitter_ms=stats["tick_jitter_ms"],
        reanchors=stats["reanchors"],
        subscriber=subscriber,
    )
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--calls", type=int, nargs="*", default=[1, 50, 200, 500])
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--port", type=int, default=19092)
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--transport", choices=["audiosocket", "ws"], default="audiosocket")
    ap.add_argument(
        "--subscriber",
        choices=["none", "fast", "slow", "dashboard"],
        default="none",
        help="each call publishes an event per caller frame to a subscriber that keeps up "
        "(fast) or never does (slow)",
    )
    ap.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        serve(args.serve, args.transport, args.subscriber)
        return
    results = []
    print(
        f"{'calls':>5} {'rx jitter p50/p99/max ms':>24} {'tx jitter p50/p99/max ms':>26} "
        f"{'cpu %':>6} {'KB/call':>8} {'frames':>14}"
    )
    if args.transport == "ws":
        print("(ws: rx columns are underruns: gaps p50/p99/max ms; frames = messages)")
    for n in args.calls:
        r = run_one(n, args.seconds, args.port, args.transport, args.subscriber)
        results.append(r)
        j, t = r["jitter_ms"], r["bridge_tick_jitter_ms"]
        print(
            f"{n:>5} {j['p50']:>8.3f}/{j['p99']:.3f}/{j['max']:<8.3f} "  # type: ignore[index]
            f"{t['p50']:>10.3f}/{t['p99']:.3f}/{t['max']:<8.3f} "  # type: ignore[index]
            f"{r['bridge_cpu_pct']:>6} {r['rss_per_call_kb']:>8} "
            f"{r['frames_received']:>7}/{r['frames_expected']}",
            flush=True,
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    main()
