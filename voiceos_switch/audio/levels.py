"""Levels of 20 ms frames: loudness, the line's noise floor, the agent's echo.

The listener's fastest cues come from these: a caller's voice starting over
the agent is loud against the line's noise floor and against what the
agent's own voice can bring back as echo, within one or two frames, long
before a neural VAD is sure. Levels are in dB relative to full scale.
"""

from __future__ import annotations

import collections
import math

import numpy as np

#: the level of digital silence, where the log would diverge
FLOOR_DB = -96.0


def level_db(pcm: bytes) -> float:
    """RMS level of PCM16 audio in dBFS."""
    if len(pcm) < 2:
        return FLOOR_DB
    x = np.frombuffer(pcm[: len(pcm) // 2 * 2], dtype="<i2").astype(np.float32)
    power = float(np.mean(x * x))
    if power <= 0.0:
        return FLOOR_DB
    return max(FLOOR_DB, 10.0 * math.log10(power / (32768.0 * 32768.0)))


class NoiseFloor:
    """The line's background level: a slow tracker of the quiet frames.

    It follows the level down at once and up slowly (about 3 dB a second at
    50 frames a second), so speech does not raise it but a line that gets
    noisier is followed within seconds.
    """

    def __init__(
        self, initial_db: float = -60.0, rise_db_per_frame: float = 0.06, lowest_db: float = -70.0
    ) -> None:
        self.db = initial_db
        self.rise = rise_db_per_frame
        #: a line of digital silence still counts as this noisy: a breath at
        #: -60 dB is not a voice just because the line was silent before it
        self.lowest = lowest_db

    def update(self, frame_db: float) -> float:
        if frame_db < self.db:
            self.db = max(self.lowest, frame_db)
        else:
            self.db = min(frame_db, self.db + self.rise)
        return self.db


class EchoEstimate:
    """What the agent's own voice can bring back on the caller's channel.

    Fed the level of every agent frame as it goes out, it predicts the
    loudest echo that could be arriving now: the loudest agent frame of the
    last ``window_s`` (echo paths on phone lines delay by tens to hundreds
    of milliseconds) less the echo return loss. The loss starts at
    ``initial_loss_db`` (telephone networks keep line echo at least 6 dB
    down, usually far more) and is learnt when a sound over the agent turns
    out to have been its own words.
    """

    def __init__(self, window_s: float = 0.4, initial_loss_db: float = 12.0) -> None:
        self.window_s = window_s
        self.loss_db = initial_loss_db
        self._sent: collections.deque[tuple[float, float]] = collections.deque()

    def sent(self, at: float, frame_db: float) -> None:
        self._sent.append((at, frame_db))
        while self._sent and self._sent[0][0] < at - self.window_s:
            self._sent.popleft()

    def predicted_db(self, now: float) -> float:
        """The loudest echo that could be arriving at ``now``."""
        while self._sent and self._sent[0][0] < now - self.window_s:
            self._sent.popleft()
        if not self._sent:
            return FLOOR_DB
        return max(db for _, db in self._sent) - self.loss_db

    def learn(self, heard_db: float, now: float) -> None:
        """A sound of ``heard_db`` at ``now`` was the agent's own voice coming
        back: from now on, expect echo at least that loud."""
        loudest = max((db for _, db in self._sent), default=None)
        if loudest is not None:
            self.loss_db = min(self.loss_db, max(0.0, loudest - heard_db - 3.0))
