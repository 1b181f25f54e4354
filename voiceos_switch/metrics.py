"""Prometheus metrics of one bridge process, fed by the calls' event buses.

:class:`Metrics` is a subscriber of every call's bus (cheap: a counter or
a histogram observation per event) with a registry of its own. No label
carries a call: the labels are bounded sets (a stage, an outcome, an
emotion's type, a tool's name). :func:`serve_metrics` answers
``GET /metrics`` in the text format on loopback by default; anywhere wider
it needs a bearer token.
"""

from __future__ import annotations

import asyncio
import hmac
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from . import events as ev
from . import log

logger = log.get(__name__)

#: seconds after the caller's last word
LATENCY_BUCKETS = (0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0)
STAGES = ("endpoint", "stt_final", "llm_first_token", "tts_first_audio", "first_frame_sent")


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.active_calls = Gauge("voiceos_active_calls", "Calls in progress.", registry=r)
        self.calls = Counter(
            "voiceos_calls", "Calls ended, by how they ended.", ["outcome"], registry=r
        )
        self.call_seconds = Histogram(
            "voiceos_call_duration_seconds",
            "How long calls lasted.",
            buckets=(5, 15, 30, 60, 120, 300, 600, 1800, 3600),
            registry=r,
        )
        self.turn_latency = Histogram(
            "voiceos_turn_latency_seconds",
            "Agent turns: each stage's time after the caller's last word "
            "(first_frame_sent is the response time).",
            ["stage"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.turns = Counter(
            "voiceos_agent_turns", "Agent turns, by how they were answered.", ["answer"], registry=r
        )
        self.barge_ins = Counter(
            "voiceos_barge_ins",
            "Voices over the agent, by what they were (interrupted, backchannel, echo, ...).",
            ["outcome"],
            registry=r,
        )
        self.emotions = Counter(
            "voiceos_emotions_detected", "Emotions announced.", ["type"], registry=r
        )
        self.escalations = Counter(
            "voiceos_escalations", "Requests for a person, by source.", ["source"], registry=r
        )
        self.transfers = Counter("voiceos_transfers", "Calls handed to a person.", registry=r)
        self.tools = Counter("voiceos_tool_calls", "Tool calls, by tool.", ["tool"], registry=r)
        self.fallbacks = Counter(
            "voiceos_provider_fallbacks",
            "A provider failed or stalled and the next of its chain took over, by stage "
            "(llm, stt, tts) and the provider that failed.",
            ["stage", "provider"],
            registry=r,
        )
        self.dropped_events = Gauge(
            "voiceos_events_dropped",
            "Events a slow subscriber lost (summed over live and ended calls).",
            registry=r,
        )
        self.pacer_late_ticks = Gauge(
            "voiceos_pacer_late_ticks", "Frame-clock ticks that came late.", registry=r
        )
        self.pacer_max_late = Gauge(
            "voiceos_pacer_max_lateness_seconds", "The latest frame-clock tick so far.", registry=r
        )
        self.outbox_backlog = Gauge(
            "voiceos_outbox_backlog", "Analysis jobs stored and not yet queued.", registry=r
        )

    def observe(self, event: ev.Event) -> None:
        """The subscriber: one event into the metrics."""
        if isinstance(event, ev.CallStarted):
            self.active_calls.inc()
        elif isinstance(event, ev.CallEnded):
            self.active_calls.dec()
            self.calls.labels("transferred" if event.transferred_to else event.reason).inc()
            self.call_seconds.observe(event.duration_s)
        elif isinstance(event, ev.TurnLatency):
            self.turns.labels(event.answer or "-").inc()
            for stage in STAGES:
                ms = event.marks_ms.get(stage)
                if ms is not None:
                    self.turn_latency.labels(stage).observe(max(0.0, ms / 1000))
        elif isinstance(event, ev.BargeInResolved):
            self.barge_ins.labels(event.outcome).inc()
        elif isinstance(event, ev.EmotionDetected):
            self.emotions.labels(str(getattr(event.emotion, "type", "?"))).inc()
        elif isinstance(event, ev.EscalationRequested):
            self.escalations.labels(event.source).inc()
        elif isinstance(event, ev.Transferred):
            self.transfers.inc()
        elif isinstance(event, ev.ToolCalled):
            self.tools.labels(event.name).inc()
        elif isinstance(event, ev.ProviderFallback):
            self.fallbacks.labels(event.stage, event.provider).inc()

    def sample(self, clock: Any = None, dropped: int = 0, backlog: int | None = None) -> None:
        """Figures read rather than counted, taken at each scrape."""
        if clock is not None:
            self.pacer_late_ticks.set(getattr(clock, "late_ticks", 0))
            self.pacer_max_late.set(getattr(clock, "max_lateness", 0.0))
        self.dropped_events.set(dropped)
        if backlog is not None:
            self.outbox_backlog.set(backlog)

    def text(self) -> bytes:
        return generate_latest(self.registry)


async def serve_metrics(
    metrics: Metrics,
    host: str,
    port: int,
    token: str | None = None,
    before_scrape: Any = None,
) -> asyncio.Server:
    """``GET /metrics`` (with ``Authorization: Bearer <token>`` when a token
    is set); anything else is 404, a wrong or missing token 401."""

    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            lines = head.decode("latin-1").split("\r\n")
            method, path, *_ = (lines[0].split(" ") + ["", ""])[:3]
            headers = {
                k.strip().lower(): v.strip()
                for k, _, v in (line.partition(":") for line in lines[1:] if line)
            }
            if token is not None:
                given = headers.get("authorization", "")
                if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
                    await _reply(writer, 401, b"unauthorized\n", "text/plain")
                    return
            if method != "GET" or path.split("?")[0] != "/metrics":
                await _reply(writer, 404, b"not found\n", "text/plain")
                return
            if before_scrape is not None:
                before_scrape()
            await _reply(writer, 200, metrics.text(), CONTENT_TYPE_LATEST)
        except (
            TimeoutError,
            asyncio.IncompleteReadError,
            ConnectionError,
            asyncio.LimitOverrunError,
        ):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(client, host, port)
    logger.info(log.kv(event="metrics_listening", address=f"{host}:{server_port(server)}"))
    return server


def server_port(server: asyncio.Server) -> int:
    return int(server.sockets[0].getsockname()[1])


async def _reply(writer: asyncio.StreamWriter, status: int, body: bytes, ctype: str) -> None:
    reason = {200: "OK", 401: "Unauthorized", 404: "Not Found"}[status]
    writer.write(
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
        + body
    )
    await writer.drain()
