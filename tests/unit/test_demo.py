"""The whole pipeline on the embedded models: `voiceos-switch demo`'s call."""

from __future__ import annotations

import json
import subprocess
import sys
import wave
from pathlib import Path

from tests.textcheck import normalise


def test_demo_call_on_embedded_models(tmp_path: Path) -> None:
    wav = tmp_path / "demo.wav"
    proc = subprocess.run(
        [sys.executable, "-m", "voiceos_switch.cli", "demo", "--json", "--wav", str(wav)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    transcript = report["transcript"]
    callers = [t["text"] for t in transcript if t["role"] == "caller"]
    agents = [t for t in transcript if t["role"] == "agent"]
    # the recogniser heard each question
    assert "saturday" in normalise(callers[0])
    assert normalise(callers[1])[-3:] == ["four", "two", "seven"]
    # the order question went to the tool, and its facts were spoken
    turns = report["turns"]
    assert turns[1]["tools"] == ["lookup_order"]
    assert "friday" in normalise(agents[2]["text"])
    # the caller interrupted the agent once, and the agent stopped
    assert report["barge_ins"] >= 1
    assert any(t["interrupted"] for t in agents)
    # every turn has its latency marks, and an answer reached the wire
    for turn in turns:
        assert turn["first_frame_sent_ms"] is not None
        assert turn["endpoint_ms"] <= turn["first_frame_sent_ms"]
    assert all(w["response_ms"] is not None for w in report["wire"])
    with wave.open(str(wav)) as w:
        assert w.getnchannels() == 2 and w.getframerate() == 8000
        assert w.getnframes() > 8000 * 10
