"""The bridge's recordings keep the call's timeline: a PBX sends nothing
while its side is silent, and those pauses are written as silence, so the
two legs line up and play for as long as the call lasted."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np

from voiceos_switch.audio.recorder import WavCallRecording

RATE = 8000
FRAME = 160  # 20 ms


def frames_of(path: Path) -> np.ndarray:
    with wave.open(str(path)) as w:
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")


def test_a_pause_in_the_callers_audio_is_kept_as_silence(tmp_path: Path) -> None:
    now = [0.0]
    rec = WavCallRecording(tmp_path, "c1", RATE, clock=lambda: now[0])
    voice = np.full(FRAME, 1000, dtype="<i2").tobytes()
    for _ in range(50):  # one second of speech, frame by frame
        now[0] += 0.02
        rec.inbound(voice)
        rec.outbound(voice)
    now[0] += 2.0  # the caller's side sends nothing for two seconds
    for _ in range(50):
        now[0] += 0.02
        rec.inbound(voice)
        rec.outbound(voice)  # the agent's leg is paced: it never has a gap
    rec.close()
    caller, agent = frames_of(rec.caller_path), frames_of(rec.agent_path)
    assert len(caller) / RATE == 4.0 == len(agent) / RATE
    assert not caller[RATE : 3 * RATE].any()  # the pause, as silence, where it was
    assert (caller[3 * RATE :] == 1000).all() and (caller[:RATE] == 1000).all()


def test_jitter_shorter_than_a_gap_adds_nothing(tmp_path: Path) -> None:
    now = [0.0]
    rec = WavCallRecording(tmp_path, "c2", RATE, clock=lambda: now[0])
    voice = np.full(FRAME, 7, dtype="<i2").tobytes()
    for i in range(100):  # some frames 60 ms late, the next on time again
        now[0] = 0.02 * (i + 1) + (0.06 if i % 10 == 0 else 0.0)
        rec.inbound(voice)
    rec.close()
    assert len(frames_of(rec.caller_path)) == 100 * FRAME
