"""Bridge-side recordings: the caller's and the agent's leg as two WAV files."""

from __future__ import annotations

import os
import time
import wave
from collections.abc import Callable
from pathlib import Path

#: a pause in a leg's audio longer than this is written as silence, so both
#: legs keep the call's timeline (a PBX sends nothing while its side is
#: silent, with no comfort noise)
GAP_S = 0.1


class WavCallRecording:
    """``<dir>/<call id>-caller.wav`` and ``<call id>-agent.wav``, 16-bit mono."""

    def __init__(
        self,
        directory: Path,
        call_id: str,
        sample_rate: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self._clock = clock
        self._t0 = clock()
        self._rate = sample_rate
        self._written = {"caller": 0, "agent": 0}
        self.caller_path = directory / f"{call_id}-caller.wav"
        self.agent_path = directory / f"{call_id}-agent.wav"
        self._caller = self._open(self.caller_path, sample_rate)
        self._agent = self._open(self.agent_path, sample_rate)

    @staticmethod
    def _open(path: Path, sample_rate: int) -> wave.Wave_write:
        w = wave.open(str(path), "wb")
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        return w

    def _write(self, leg: str, w: wave.Wave_write, pcm: bytes) -> None:
        samples = len(pcm) // 2
        behind = int((self._clock() - self._t0) * self._rate) - samples - self._written[leg]
        if behind > GAP_S * self._rate:
            w.writeframesraw(bytes(2 * behind))
            self._written[leg] += behind
        w.writeframesraw(pcm)
        self._written[leg] += samples

    def inbound(self, pcm: bytes) -> None:
        self._write("caller", self._caller, pcm)

    def outbound(self, pcm: bytes) -> None:
        self._write("agent", self._agent, pcm)

    def close(self) -> None:
        """Finish both files and put them on disk: the call record that points
        at them is written right after."""
        self._caller.close()
        self._agent.close()
        for path in (self.caller_path, self.agent_path):
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


class WavRecorder:
    """A factory the transports call once per call."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def __call__(self, call_id: str, sample_rate: int) -> WavCallRecording:
        return WavCallRecording(self.directory, call_id, sample_rate)
