"""Traces of a real call through the bridge (the FreeSWITCH stand-in, the
scripted agent): the call's span, a span per answered turn lasting exactly
its response time, the turn's stages inside it in order, and with
VOICEOS_OTEL=true the spans reach an OTLP/HTTP receiver on loopback."""

from __future__ import annotations

import asyncio
import http.server
import threading
from pathlib import Path

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tests.unit.test_emotion_calls import CALM, REPLIES, clips, run_call, scripted_agent
from tests.unit.test_freeswitch_faults import bridge, until
from voiceos_switch import Agent, Call
from voiceos_switch.settings import Settings
from voiceos_switch.tracing import STAGES, Tracing


async def test_a_call_and_its_turns_are_traced(tmp_path: Path) -> None:
    audio = await clips()
    ended: list[Call] = []
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))

    def make(s: Settings) -> Agent:
        agent, _ = scripted_agent(s, audio, REPLIES, ended)
        agent.subscribers.append(Tracing(provider).observe)
        return agent

    async with bridge(tmp_path, make) as (standin, agent):
        await run_call(standin, [audio[CALM], audio[CALM]])
        await until(lambda: ended, 30, "the call never ended")
        await until(
            lambda: any(s.name == "call" for s in exporter.get_finished_spans()),
            10,
            "the call's span never ended",
        )
        record = agent.store.get_call(ended[0].id)
    assert record is not None
    spans = exporter.get_finished_spans()
    (call,) = [s for s in spans if s.name == "call"]
    assert call.attributes["voiceos.call_id"] == ended[0].id
    assert call.attributes["voiceos.end_reason"] == record["end_reason"]
    turns = sorted((s for s in spans if s.name == "turn"), key=lambda s: s.start_time)
    answered = [t for t in record["latency"] if t["first_frame_sent"] is not None]
    assert len(turns) == len(answered) == 2
    for span, marks in zip(turns, answered, strict=True):
        assert span.parent is not None and span.parent.span_id == call.context.span_id
        assert span.context.trace_id == call.context.trace_id
        # the turn lasts its response time, from the caller's last word
        assert (span.end_time - span.start_time) / 1e6 == pytest.approx(
            marks["first_frame_sent"], abs=1.0
        )
        inside = sorted(
            (s for s in spans if s.parent is not None and s.parent.span_id == span.context.span_id),
            key=lambda s: s.start_time,
        )
        names = [s.name for s in inside]
        assert names == [f"turn.{st}" for st in STAGES if marks.get(st) is not None], names
        for a, b in zip(inside, inside[1:], strict=False):
            assert a.end_time == b.start_time  # the stages follow each other
        assert inside[0].start_time == span.start_time and inside[-1].end_time == span.end_time
    assert call.start_time <= turns[0].start_time and turns[-1].end_time <= call.end_time


class _Receiver(http.server.BaseHTTPRequestHandler):
    got: list[ExportTraceServiceRequest] = []

    def do_POST(self) -> None:  # noqa: N802 - the handler's name
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.path == "/v1/traces":
            request = ExportTraceServiceRequest()
            request.ParseFromString(body)
            _Receiver.got.append(request)
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


async def test_voiceos_otel_exports_to_an_otlp_receiver(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{server.server_port}")
    _Receiver.got.clear()
    audio = await clips()
    ended: list[Call] = []

    def make(s: Settings) -> Agent:
        agent, _ = scripted_agent(s.model_copy(update={"otel": True}), audio, REPLIES, ended)
        return agent

    try:
        async with bridge(tmp_path, make) as (standin, _agent):
            await run_call(standin, [audio[CALM]])
            await until(lambda: ended, 30, "the call never ended")
        # the bridge flushed its spans as it stopped
        names = [
            span.name
            for request in _Receiver.got
            for rs in request.resource_spans
            for ss in rs.scope_spans
            for span in ss.spans
        ]
        assert "call" in names and "turn" in names and "turn.first_frame_sent" in names, names
        services = {
            a.value.string_value
            for request in _Receiver.got
            for rs in request.resource_spans
            for a in rs.resource.attributes
            if a.key == "service.name"
        }
        assert services == {"voiceos-switch"}
    finally:
        server.shutdown()
        await asyncio.sleep(0)
