"""OpenTelemetry traces of calls and turns, from the event bus.

A subscriber (like the metrics): each call is a span (``call``, from its
first event to its end), each answered turn a child span (``turn``, from
the caller's last word to the agent's first frame on the wire), and each
stage of the turn a child of that (``turn.endpoint``, ``turn.confirmed``,
``turn.stt_final``, ``turn.llm_first_token``, ``turn.tts_first_audio``,
``turn.first_frame_sent``: from the stage before it to its own mark), so a
slow turn shows which stage it waited on. Barge-ins, tool calls, emotions,
hand-offs and keys are events on the call's span. Spans are made after the
fact from the marks (the turn loop is never held by tracing).

Only the OpenTelemetry API is needed to run; with ``VOICEOS_OTEL=true`` the
bridge sets up the SDK with the OTLP/HTTP exporter (the ``otel`` extra;
``OTEL_EXPORTER_OTLP_ENDPOINT`` and the other standard variables apply),
unless the application has set a tracer provider of its own.
"""

from __future__ import annotations

import os
from typing import Any

from opentelemetry import trace

from . import events as ev
from .errors import ConfigurationError

STAGES = ev.TURN_STAGES


def _ns(t: float) -> int:
    return int(t * 1e9)


class Tracing:
    """Spans from one bridge's call events: add :meth:`observe` to the
    agent's subscribers."""

    def __init__(self, provider: Any = None) -> None:
        self.tracer = trace.get_tracer("voiceos_switch", tracer_provider=provider)
        self._calls: dict[str, Any] = {}

    def _call_span(self, event: ev.Event) -> Any:
        span = self._calls.get(event.call_id)
        if span is None:  # a call first seen mid-way (tracing turned on during it)
            span = self._calls[event.call_id] = self.tracer.start_span(
                "call", start_time=_ns(event.at), attributes={"voiceos.call_id": event.call_id}
            )
        return span

    def observe(self, event: ev.Event) -> None:
        if isinstance(event, ev.CallStarted):
            span = self._call_span(event)
            span.set_attributes(
                {
                    "voiceos.pbx": event.pbx,
                    "voiceos.sample_rate": event.sample_rate,
                    **({"voiceos.variant": event.variant} if event.variant else {}),
                }
            )
        elif isinstance(event, ev.TurnLatency):
            self._turn(event)
        elif isinstance(event, ev.CallEnded):
            span = self._call_span(event)
            span.set_attributes(
                {"voiceos.end_reason": event.reason, "voiceos.duration_s": event.duration_s}
            )
            if event.transferred_to:
                span.set_attribute("voiceos.transferred_to", event.transferred_to)
            span.end(end_time=_ns(event.at))
            self._calls.pop(event.call_id, None)
        elif isinstance(
            event,
            ev.BargeInPaused
            | ev.BargeInResolved
            | ev.ToolCalled
            | ev.EmotionDetected
            | ev.EscalationRequested
            | ev.Transferred
            | ev.Dtmf
            | ev.ProviderFallback,
        ):
            self._call_span(event).add_event(event.kind, _attributes(event), _ns(event.at))

    def _turn(self, event: ev.TurnLatency) -> None:
        start = event.speech_end_at
        marks = event.marks_ms
        if start is None or marks.get("first_frame_sent") is None:
            return  # not answered (or cut before a frame went out): no span of its own
        parent = trace.set_span_in_context(self._call_span(event))
        end = start + float(marks["first_frame_sent"] or 0.0) / 1000
        turn = self.tracer.start_span(
            "turn",
            context=parent,
            start_time=_ns(start),
            attributes={
                "voiceos.call_id": event.call_id,
                "voiceos.turn": event.index,
                "voiceos.answer": event.answer,
                "voiceos.endpoint_reason": event.endpoint_reason,
                "voiceos.preemptive": event.preemptive,
                "voiceos.interrupted": event.interrupted,
                **{f"voiceos.ms.{k}": float(v) for k, v in marks.items() if v is not None},
            },
        )
        inside = trace.set_span_in_context(turn)
        before = start
        for stage in STAGES:
            at = marks.get(stage)
            if at is None:
                continue
            stage_end = max(before, start + float(at) / 1000)
            self.tracer.start_span(f"turn.{stage}", context=inside, start_time=_ns(before)).end(
                end_time=_ns(stage_end)
            )
            before = stage_end
        turn.end(end_time=_ns(end))


def _attributes(event: ev.Event) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in ev.as_dict(event).items():
        if key in ("kind", "call_id", "at"):
            continue
        if isinstance(value, dict):
            for k, v in value.items():
                if isinstance(v, str | int | float | bool):
                    out[f"{key}.{k}"] = v
        elif isinstance(value, str | int | float | bool):
            out[key] = value
    return out


def exporting_provider() -> Any:
    """The tracer provider the bridge exports with: the application's own if
    it set one, else the SDK's with a batching OTLP/HTTP exporter."""
    current = trace.get_tracer_provider()
    if not isinstance(current, trace.ProxyTracerProvider | trace.NoOpTracerProvider):
        return current
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError as exc:
        raise ConfigurationError(
            "VOICEOS_OTEL=true needs the OpenTelemetry SDK and its OTLP exporter: "
            "pip install 'voiceos-switch[otel]' (opentelemetry-sdk, "
            f"opentelemetry-exporter-otlp-proto-http); missing: {exc.name}"
        ) from exc
    # OTEL_SERVICE_NAME, where set, names the service instead
    named = {} if os.environ.get("OTEL_SERVICE_NAME") else {"service.name": "voiceos-switch"}
    provider = TracerProvider(resource=Resource.create(named))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    return provider
