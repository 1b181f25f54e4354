"""The call record: one JSON-able dict per call, built at hangup.

Everything a later analysis or a person reviewing the call needs: who called
whom, when, every turn (who, text, times, interrupted), per-turn latency,
emotions, tool calls, transfers, review flags, recording files, what the
providers were used for, and the cost by the price table in settings.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Any

from ..call import Call
from ..settings import Settings

SCHEMA = 1


def costs(usage: dict[str, float], duration_s: float, settings: Settings) -> dict[str, float]:
    """Cost by line item from the price table; per minute over the call's length."""
    minutes = duration_s / 60
    items = {
        "telephony": minutes * settings.price_telephony_per_min,
        "stt": usage["stt_seconds"] / 60 * settings.price_stt_per_min,
        "llm_in": usage["llm_tokens_in"] / 1000 * settings.price_llm_per_1k_tokens_in,
        "llm_out": usage["llm_tokens_out"] / 1000 * settings.price_llm_per_1k_tokens_out,
        "tts": usage["tts_chars"] / 1000 * settings.price_tts_per_1k_chars,
    }
    total = sum(items.values())
    return {
        **{k: round(v, 6) for k, v in items.items()},
        "total": round(total, 6),
        "per_minute": round(total / minutes, 6) if minutes > 0 else 0.0,
    }


def recordings(call_id: str, settings: Settings) -> dict[str, str]:
    """The bridge-side WAV files of the call's two legs, where they exist."""
    directory = settings.resolved_recordings_dir
    if directory is None:
        return {}
    out = {}
    for leg in ("caller", "agent"):
        path = directory / f"{call_id}-{leg}.wav"
        if path.exists():
            out[leg] = str(path)
    return out


def build_record(call: Call, conversation: Any, settings: Settings) -> dict[str, Any]:
    ended = call.ended_at or time.time()
    duration = round(max(0.0, ended - call.started_at), 3)  # as stored: the bill uses it
    usage = asdict(call.usage)
    latency = [
        m.as_ms()
        | {
            "turn": m.index,
            "caller_text": m.caller_text,
            "interrupted": m.interrupted,
            "tools": list(m.tool_calls),
        }
        for m in (conversation.metrics if conversation is not None else [])
    ]
    return {
        "schema": SCHEMA,
        "id": call.id,
        "pbx": call.pbx,
        "pbx_address": call.pbx_address,
        "bridge": settings.resolved_bridge_name,
        "agent": call.agent_name,
        "variant": call.variant,
        "caller": call.caller,
        "called": call.called,
        "started_at": call.started_at,
        "ended_at": ended,
        "duration_s": duration,
        "sample_rate": call.sample_rate,
        "end_reason": call.end_reason,
        "turns": [
            {
                "role": t.role,
                "text": t.text,
                "started_at": t.started_at,
                "ended_at": t.ended_at,
                "interrupted": t.interrupted,
                **({"planned_text": t.planned_text} if t.interrupted and t.planned_text else {}),
            }
            for t in call.transcript
        ],
        "latency": latency,
        "emotions": list(call.emotions),
        "tool_calls": list(call.tool_calls),
        "transfers": [call.transferred_to] if call.transferred_to else [],
        "dtmf": "".join(call.dtmf),
        "review_flags": [{"reason": f.reason, "at": f.at} for f in call.review_flags],
        "recordings": recordings(call.id, settings),
        "pbx_recordings": list(call.recordings),
        "usage": usage,
        "cost": costs(usage, duration, settings),
    }
