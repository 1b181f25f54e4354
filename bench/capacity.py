"""Calls per box: SIPp callers through Kamailio and the real Asterisk 22
into one bridge, ramping the number of concurrent calls until quality breaks.

The cell on loopback: Kamailio's dispatcher (the shipped kamailio.cfg) in
front of a managed Asterisk instance of its own (its own ports and root), the
dialplan's AudioSocket into one bridge process, AMI between them. SIPp
(``bench/sipp/caller.xml``) places N concurrent calls with real RTP: each
waits out the greeting, asks one recorded question (G.711 mu-law, 8 kHz),
listens, and hangs up. Every RTP packet to and from the callers is
timestamped by the kernel (``bench/rtpmeter.py``), so the figures are the
caller's (with ``--bridges K``, K bridge processes share the calls, taken by
the dialplan in turn):

- jitter: |arrival gap - 20 ms| of every packet the callers receive, p99;
- response: the end of the caller's question on the wire to the first
  sound of the agent's answer, p50 / p95 over the calls;
- failed: calls SIPp counts failed, and answered calls where no answer came;
- CPU per call: Asterisk's and the bridge's CPU time over the run divided by
  the call-seconds carried (percent of one core per call).

Brains: ``remote`` (the default) runs the agent on OpenAI-compatible
transcription, chat and speech servers in their own process that answer a
fixed 100 ms after each request, so the media plane and the orchestration
are measured, not a model; ``embedded`` runs the demo shop agent on the
embedded models (Moonshine, SmolLM2 with the facts, piper).

A step is good while jitter p99 < 2 ms, response p95 is within 100 ms of the
one-call figure and no call failed; the ramp stops after the first bad step.

    .venv/bin/python bench/capacity.py                # remote: 1, 10, 20, 40, 60, 80, 100
    .venv/bin/python bench/capacity.py --brains embedded --calls 1,2,4,6
    .venv/bin/python bench/capacity.py --calls 1,50 --json capacity.json
    .venv/bin/python bench/capacity.py --bridges 2        # a bridge process per core

Needs root (the Asterisk sandbox, the packet meter), kamailio and
sip-tester (SIPp) installed; nothing else may use the cell's ports.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rtpmeter import RtpMeter, Stream  # bench/rtpmeter.py (scripts run from bench/)
from services import streamed_answer  # bench/services.py
from stats import pct  # bench/stats.py

HERE = Path(__file__).resolve().parent
DELAY_S = 0.1
QUESTION = "What time do you open on Saturday?"
ANSWER = "We open at nine on Saturday and close at five. Anything else I can do?"
GREETING = "Hello, Acme Hardware. How can I help?"
PROXY = "127.0.0.1:5770"
SIPP_PORT = 5780
MEDIA_PORT = 41300
GREET_MS = 4500
LISTEN_MS = 7000
JITTER_LIMIT_MS = 2.0
RESPONSE_MARGIN_MS = 100.0


# ------------------------------------------------------------- the brains
def serve(port: int) -> None:
    """Transcription, chat and speech, each answering DELAY_S after the request."""
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response, StreamingResponse
    from starlette.routing import Route

    rate = 24000  # what an OpenAI-compatible speech server streams (pcm)

    def voice(text: str) -> bytes:
        """A voice-like signal, 70 ms a character: a 140 Hz buzz in syllables."""
        n = int(len(text) * 0.07 * rate)
        t = np.arange(n) / rate
        buzz = np.sign(np.sin(2 * np.pi * 140 * t)) * 0.5 + np.sin(2 * np.pi * 420 * t) * 0.3
        syllables = 0.55 + 0.45 * np.sin(2 * np.pi * 4 * t)
        return (buzz * syllables * 9000).astype("<i2").tobytes()

    async def transcriptions(request: Request) -> Response:
        start = time.monotonic()
        await request.body()
        await asyncio.sleep(max(0.0, start + DELAY_S - time.monotonic()))
        return JSONResponse({"text": QUESTION, "words": [], "duration": 2.0})

    async def completions(request: Request) -> Response:
        return await streamed_answer(request, ANSWER, DELAY_S)

    async def speech(request: Request) -> Response:
        start = time.monotonic()
        req = json.loads(await request.body())
        pcm = voice(str(req.get("input", "")))

        async def body() -> Any:
            await asyncio.sleep(max(0.0, start + DELAY_S - time.monotonic()))
            step = rate // 5 * 2  # 200 ms a chunk
            for i in range(0, len(pcm), step):
                yield pcm[i : i + step]

        return StreamingResponse(body(), media_type="audio/pcm")

    app = Starlette(
        routes=[
            Route("/v1/audio/transcriptions", transcriptions, methods=["POST"]),
            Route("/v1/chat/completions", completions, methods=["POST"]),
            Route("/v1/audio/speech", speech, methods=["POST"]),
        ]
    )
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


def bridge(brains: str, services: str) -> None:
    """The bridge process: this cell's agent, configured by VOICEOS_* like any."""
    from voiceos_switch.agent import Agent
    from voiceos_switch.demo import demo_agent
    from voiceos_switch.settings import Settings

    if brains == "embedded":
        agent = demo_agent(Settings(), voice="piper")
    else:
        url = f"http://{services}/v1"
        settings = Settings(
            llm_base_url=url, stt_base_url=url, stt="openai:bench", tts_base_url=url
        )
        agent = Agent(
            model="openai:bench",
            voice="openai:alloy",
            system_prompt="You are a phone agent for a hardware store.",
            greeting=GREETING,
            settings=settings,
        )
    agent.serve()


# ------------------------------------------------------------- the cell
def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Cell:
    tmp: Path
    brains: str
    nbridges: int = 1
    proxy: Any = None
    pbx: Any = None
    bridges: list[subprocess.Popen[bytes]] = field(default_factory=list)
    services: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        from voiceos_switch.pbx.asterisk import AsteriskSandbox
        from voiceos_switch.pbx.kamailio import Pbx, SipProxy
        from voiceos_switch.settings import Settings

        secret = os.urandom(12).hex()
        addresses = [f"127.0.0.1:{_free_port()}" for _ in range(self.nbridges)]
        settings = Settings(
            asterisk_root=Settings().state_dir / "asterisk-bench",
            sip_port=5760,
            carrier_sim_port=5762,
            ami_port=5738,
            ami_secret=secret,
            asterisk_http_port=8788,
            asterisk_rtp_ports="26000-29999",
            asterisk_bridges="&".join(addresses),
            asterisk_sip_proxy=PROXY,
            lab_carrier_target=PROXY,
        )
        self.pbx = AsteriskSandbox(settings, template=AsteriskSandbox(Settings()))
        print("[capacity] starting the cell's Asterisk", file=sys.stderr, flush=True)
        self.pbx.restart()
        # Asterisk's own limits stay out of the way of the ramp
        self.pbx.cli("core set verbose 0")
        env = dict(
            os.environ,
            VOICEOS_AMI_PORT="5738",
            VOICEOS_AMI_SECRET=secret,
            VOICEOS_MAX_CALLS="1000",
            VOICEOS_STATE_DIR=str(self.tmp / "bridge"),
            VOICEOS_REDIS_URL="",
        )
        services = f"127.0.0.1:{_free_port()}"
        if self.brains == "remote":
            self.services = subprocess.Popen(
                [sys.executable, __file__, "serve", "--port", services.rsplit(":", 1)[1]]
            )
        script = os.environ.get("VOICEOS_BENCH_BRIDGE", __file__)
        for n, address in enumerate(addresses):
            with open(self.tmp / f"bridge{n}.log", "wb") as log:
                self.bridges.append(
                    subprocess.Popen(
                        [sys.executable, script, "bridge", "--brains", self.brains,
                         "--services", services],
                        env=dict(env, VOICEOS_AUDIOSOCKET=address, VOICEOS_BRIDGE_NAME=f"bridge-{n}",
                                 VOICEOS_STATE_DIR=str(self.tmp / f"bridge{n}")),
                        stdout=log,
                        stderr=subprocess.STDOUT,
                    )
                )  # fmt: skip
        self.proxy = SipProxy(self.tmp / "kamailio", [Pbx("127.0.0.1:5760", 1000)], listen=PROXY)
        self.proxy.start()
        self.proxy.wait_state(self.proxy.pbxs[0], True)
        print("[capacity] waiting for the bridge's models", file=sys.stderr, flush=True)
        deadline = time.monotonic() + 300
        for n, bridge in enumerate(self.bridges):
            log = self.tmp / f"bridge{n}.log"
            while "bridge_ready" not in log.read_text(errors="replace"):
                if bridge.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(
                        "the bridge did not start:\n" + log.read_text(errors="replace")[-2000:]
                    )
                time.sleep(0.2)

    def asterisk_pid(self) -> int:
        return int(self.pbx.host_path("run/asterisk/asterisk.pid").read_text())

    def stop(self) -> None:
        for proc in (*self.bridges, self.services):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
        if self.proxy is not None:
            self.proxy.stop()
        if self.pbx is not None:
            self.pbx.down()


# ------------------------------------------------------------- the callers
async def question_file(tmp: Path, brains: str) -> tuple[Path, Path, int]:
    """The question as SIPp plays it (headerless mu-law) and a silence loop."""
    sys.path.insert(0, str(HERE / "sipp"))
    from make_ulaw import PACKET, SILENCE, ulaw_encode

    from voiceos_switch.providers.tts.piper import PiperTTS

    pcm = await PiperTTS(steady=True).synthesize(QUESTION, 8000)
    x = np.frombuffer(pcm, dtype="<i2")
    data = ulaw_encode(x).tobytes()
    data += bytes([SILENCE]) * (-len(data) % PACKET)
    question = tmp / "question.ul"
    question.write_bytes(data)
    silence = tmp / "silence.ul"
    silence.write_bytes(bytes([SILENCE]) * PACKET * 50)
    return question, silence, len(data) // 8


def sipp(
    tmp: Path, question: Path, silence: Path, question_ms: int, calls: int, total: int
) -> dict[str, Any]:
    """SIPp places ``total`` calls, at most ``calls`` at once; its counts."""
    binary = shutil.which("sipp")
    if binary is None:
        raise SystemExit("SIPp is not installed: apt-get install -y sip-tester")
    rate = max(5, calls // 4)  # calls a second while ramping up
    stat = tmp / f"sipp-{calls}.csv"
    cmd = [
        binary, PROXY, "-sf", str(HERE / "sipp" / "caller.xml"), "-s", "100",
        "-i", "127.0.0.1", "-p", str(SIPP_PORT), "-mi", "127.0.0.1", "-mp", str(MEDIA_PORT),
        "-t", "u1", "-key", "question", f"{question},1,0", "-key", "question_ms",
        str(question_ms), "-key", "silence", f"{silence},-1,0", "-key", "greet_ms",
        str(GREET_MS), "-key", "listen_ms", str(LISTEN_MS), "-m", str(total), "-l", str(calls),
        "-r", str(rate), "-nostdin", "-trace_stat", "-stf", str(stat), "-fd", "1",
        "-timeout", "300s", "-timeout_error",
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True, timeout=400)
    counts = {"exit": proc.returncode, "successful": 0, "failed": 0}
    try:
        lines = stat.read_text().splitlines()
        header, last = lines[0].split(";"), lines[-1].split(";")
        row = dict(zip(header, last, strict=False))
        counts["successful"] = int(row.get("SuccessfulCall(C)", 0))
        counts["failed"] = int(row.get("FailedCall(C)", 0))
    except (OSError, IndexError, ValueError):
        counts["error"] = (proc.stdout + proc.stderr)[-500:]
    return counts


def analyse(streams: list[Stream]) -> dict[str, Any]:
    """Per call (the pair of streams on one Asterisk RTP port): response and jitter."""
    inbound = {s.src[1]: s for s in streams if s.direction == "in" and len(s) > 25}
    outbound = {s.dst[1]: s for s in streams if s.direction == "out" and len(s) > 25}
    responses: list[float] = []
    unanswered = 0
    jitter: list[np.ndarray] = []
    seconds = 0.0
    for port, heard in inbound.items():
        jitter.append(heard.interarrival_jitter_ms())
        seconds += float(heard.times[-1] - heard.times[0])
        said = outbound.get(port)
        if said is None:
            continue
        segments = said.sound_segments(min_gap_ms=600)
        if not segments:
            continue
        asked_end = segments[-1][1] + 0.02
        answer = heard.first_sound_after(asked_end, hold=3)
        if answer is None:
            unanswered += 1
        else:
            responses.append((answer - asked_end) * 1000.0)
    allj = np.concatenate(jitter) if jitter else np.zeros(0)
    return {
        "calls_seen": len(inbound),
        "unanswered": unanswered,
        "response_ms": {"p50": pct(responses, 0.5), "p95": pct(responses, 0.95)},
        "jitter_ms": {
            "p50": round(float(np.percentile(allj, 50)), 3) if len(allj) else None,
            "p99": round(float(np.percentile(allj, 99)), 3) if len(allj) else None,
            "max": round(float(allj.max()), 2) if len(allj) else None,
        },
        "lost_packets": int(sum(s.lost() for s in inbound.values())),
        "call_seconds": round(seconds, 1),
        "packets_in": int(sum(len(s) for s in inbound.values())),
    }


async def step(cell: Cell, files: tuple[Path, Path, int], calls: int, total: int) -> dict[str, Any]:
    question, silence, question_ms = files
    pids = {"asterisk": [cell.asterisk_pid()], "bridge": [b.pid for b in cell.bridges]}
    before = {k: sum(map(_cpu_s, p)) for k, p in pids.items()}
    meter = RtpMeter((MEDIA_PORT, MEDIA_PORT))
    meter.start()
    started = time.monotonic()
    try:
        counts = await asyncio.to_thread(
            sipp, cell.tmp, question, silence, question_ms, calls, total
        )
    finally:
        meter.stop()
    wall = time.monotonic() - started
    cpu = {k: sum(map(_cpu_s, p)) - before[k] for k, p in pids.items()}
    result = analyse(meter.streams())
    per_call = {
        f"{k}_cpu_pct_per_call": round(100 * v / result["call_seconds"], 2)
        if result["call_seconds"]
        else None
        for k, v in cpu.items()
    }
    return {
        "concurrent": calls,
        "calls": total,
        **counts,
        **result,
        **per_call,
        "cpu_pct": {k: round(100 * v / wall, 1) for k, v in cpu.items()},
        "meter_drops": meter.drops,
        "wall_s": round(wall, 1),
    }


def verdict(row: dict[str, Any], baseline_p95: float | None) -> str:
    bad = []
    j = row["jitter_ms"]["p99"]
    if j is None or j >= JITTER_LIMIT_MS:
        bad.append(f"jitter p99 {j} ms")
    p95 = row["response_ms"]["p95"]
    if p95 is None or (baseline_p95 is not None and p95 > baseline_p95 + RESPONSE_MARGIN_MS):
        bad.append(f"response p95 {p95} ms")
    if row["failed"] or row["unanswered"] or row["successful"] < row["calls"]:
        bad.append(f"{row['failed']} failed, {row['unanswered']} unanswered")
    return "good" if not bad else "broken: " + ", ".join(bad)


async def run(brains: str, ramp: list[int], nbridges: int) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="voiceos-capacity-"))
    cell = Cell(tmp, brains, nbridges)
    rows: list[dict[str, Any]] = []
    try:
        files = await question_file(tmp, brains)
        cell.start()
        baseline: float | None = None
        for n in ramp:
            # one at a time for the one-call figure (five of them), else n at once
            total = 5 if n == 1 else n
            print(f"[capacity] {n} concurrent ({total} calls)", file=sys.stderr, flush=True)
            row = await step(cell, files, n, total)
            if n == 1:
                baseline = row["response_ms"]["p95"]
            row["verdict"] = verdict(row, baseline)
            rows.append(row)
            print(
                f"[capacity] {n:4d}: jitter p99 {row['jitter_ms']['p99']} ms, response "
                f"p50/p95 {row['response_ms']['p50']}/{row['response_ms']['p95']} ms, "
                f"{row['successful']}/{row['calls']} ok, asterisk "
                f"{row['asterisk_cpu_pct_per_call']} %/call, bridge "
                f"{row['bridge_cpu_pct_per_call']} %/call: {row['verdict']}",
                file=sys.stderr,
                flush=True,
            )
            # the ramp goes on past jitter alone, and stops once answers
            # come late or calls fail
            if n != 1 and ("response" in row["verdict"] or "failed" in row["verdict"]):
                break
    finally:
        cell.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    good = [r["concurrent"] for r in rows if r["verdict"] == "good"]
    answering = [
        r["concurrent"]
        for r in rows
        if "response" not in r["verdict"] and "failed" not in r["verdict"]
    ]
    return {
        "brains": brains,
        "service_delay_ms": DELAY_S * 1000 if brains == "remote" else None,
        "cores": os.cpu_count(),
        "bridge_processes": nbridges,
        "max_good_concurrent": max(good) if good else 0,
        "max_concurrent_answering_in_time": max(answering) if answering else 0,
        "steps": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd")
    s = sub.add_parser("serve")
    s.add_argument("--port", type=int, required=True)
    b = sub.add_parser("bridge")
    b.add_argument("--brains", default="remote")
    b.add_argument("--services", default="")
    parser.add_argument("--brains", choices=("remote", "embedded"), default="remote")
    parser.add_argument("--calls", default="")
    parser.add_argument("--json", type=Path)
    parser.add_argument(
        "--bridges", type=int, default=1, help="bridge processes in the cell (one per core)"
    )
    args = parser.parse_args()
    if args.cmd == "serve":
        serve(args.port)
        return
    if args.cmd == "bridge":
        bridge(args.brains, args.services)
        return
    if os.geteuid() != 0:
        raise SystemExit("run as root: the cell's Asterisk runs in a sandbox root")
    default = "1,10,20,40,60,80,100" if args.brains == "remote" else "1,2,4,6,8"
    ramp = [int(x) for x in (args.calls or default).split(",")]
    report = asyncio.run(run(args.brains, ramp, args.bridges))
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
