"""Bridge-side recordings: the caller's and the agent's leg as two WAV files."""

from __future__ import annotations

import os
import wave
from pathlib import Path


class WavCallRecording:
    """``<dir>/<call id>-caller.wav`` and ``<call id>-agent.wav``, 16-bit mono."""

    def __init__(self, directory: Path, call_id: str, sample_rate: int) -> None:
        directory.mkdir(parents=True, exist_ok=True)
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

    def inbound(self, pcm: bytes) -> None:
        self._caller.writeframesraw(pcm)

    def outbound(self, pcm: bytes) -> None:
        self._agent.writeframesraw(pcm)

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
