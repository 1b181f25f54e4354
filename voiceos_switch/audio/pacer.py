"""Drift-free outbound pacing.

A PBX such as Asterisk's AudioSocket does not pace what it receives: audio
written faster than real time piles up inside it, and then barge-in cannot
stop it. So every call sends exactly one frame per frame period, scheduled
from a start time (never ``sleep(0.02)`` in a loop, which drifts), and
silence whenever the agent has nothing to say (an idle AudioSocket call is
hung up after 2 s).

One :class:`FrameClock` serves every call in the process: one wake-up per
20 ms for all of them, instead of one timer per call. Each call owns a
:class:`Pacer` holding its queue of frames.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable
from dataclasses import dataclass, field

from .. import log
from .clock import Clock, MonotonicClock
from .pcm import FRAME_MS, frame_bytes

logger = log.get(__name__)

#: After a stall the clock sends at most this many overdue frames per call
#: in one tick; beyond it, it re-anchors instead of bursting.
MAX_CATCHUP_FRAMES = 3


@dataclass
class Playout:
    """A piece of audio handed to the pacer; resolves when sent or cleared."""

    frames: int
    sent: int = 0
    #: clock time the first frame of this audio went out (for latency marks)
    first_sent_at: float | None = None
    #: called with that time when the first frame goes out
    on_start: Callable[[float], None] | None = None
    done: asyncio.Future[bool] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )

    @property
    def interrupted(self) -> bool:
        return self.done.done() and self.done.result() is False

    @property
    def sent_ms(self) -> int:
        return self.sent * FRAME_MS

    async def wait(self) -> bool:
        """True when every frame went out, False when cleared first."""
        return await asyncio.shield(self.done)


class Pacer:
    """One call's outbound queue; the shared clock calls :meth:`tick`."""

    def __init__(
        self,
        sample_rate: int,
        write: Callable[[bytes], None],
        lead_frames: int = 0,
    ) -> None:
        if not 0 <= lead_frames <= 3:
            raise ValueError("lead_frames must be between 0 and 3")
        self.sample_rate = sample_rate
        self.frame_size = frame_bytes(sample_rate)
        self._silence = bytes(self.frame_size)
        self._write = write
        self._lead = lead_frames
        self._queue: collections.deque[tuple[bytes, Playout | None]] = collections.deque()
        # playouts not yet fully sent, oldest first; the head owns the next frame
        self._pending: collections.deque[Playout] = collections.deque()
        self._primed = False
        self.paused = False
        self.frames_sent = 0
        self.audio_frames_sent = 0
        self.last_audio_sent_at: float | None = None
        #: called with each frame of agent audio and the time it is heard
        self.monitor: Callable[[bytes, float], None] | None = None

    @property
    def queued_frames(self) -> int:
        return len(self._queue)

    @property
    def speaking(self) -> bool:
        return bool(self._queue)

    def enqueue(self, pcm: bytes) -> Playout:
        """Queue audio; a trailing partial frame is padded with silence."""
        data = pcm
        size = self.frame_size
        n = -(-len(data) // size)  # ceil
        playout = Playout(frames=n)
        if n == 0:
            playout.done.set_result(True)
            return playout
        for i in range(n):
            chunk = data[i * size : (i + 1) * size]
            if len(chunk) < size:
                chunk = chunk + bytes(size - len(chunk))
            self._queue.append((chunk, playout if i == n - 1 else None))
        self._pending.append(playout)
        return playout

    def clear(self) -> int:
        """Drop everything queued (barge-in). Returns the frames dropped."""
        self.paused = False
        dropped = len(self._queue)
        self._queue.clear()
        while self._pending:
            playout = self._pending.popleft()
            if not playout.done.done():
                playout.done.set_result(False)
        return dropped

    def pause(self) -> None:
        """Send silence but keep the queue (a possible interruption)."""
        self.paused = True

    def resume(self) -> None:
        self.paused = False

    def tick(self, now: float) -> None:
        """Send what is due this period: one frame, more when priming the lead."""
        count = 1
        if not self._primed:
            count += self._lead
            self._primed = True
        for _ in range(count):
            self._send_one(now)

    def catch_up(self, now: float, frames: int) -> None:
        for _ in range(frames):
            self._send_one(now)

    def _take(self, now: float) -> tuple[bytes, Playout | None, Playout | None]:
        """The next queued frame, the playout it belongs to (marked started at
        ``now`` if this is its first frame) and the playout it ends, if any."""
        chunk, marker = self._queue.popleft()
        owner = self._pending[0] if self._pending else None
        if owner is not None and owner.first_sent_at is None:
            owner.first_sent_at = now
            if owner.on_start is not None:
                owner.on_start(now)
        if marker is not None and self._pending and self._pending[0] is marker:
            self._pending.popleft()
        return chunk, owner, marker

    def _send_one(self, now: float) -> None:
        if self._queue and not self.paused:
            chunk, owner, marker = self._take(now)
            self._write(chunk)
            if self.monitor is not None:
                self.monitor(chunk, now)
            self.audio_frames_sent += 1
            self.last_audio_sent_at = now
            if owner is not None:
                owner.sent += 1
            if marker is not None and not marker.done.done():
                marker.done.set_result(True)
        else:
            self._write(self._silence)
        self.frames_sent += 1


class FrameClock:
    """A drift-free 20 ms tick shared by all pacers of one event loop."""

    def __init__(self, clock: Clock | None = None, period_ms: int = FRAME_MS) -> None:
        self.clock = clock or MonotonicClock()
        self.period = period_ms / 1000
        self._pacers: set[Pacer] = set()
        self._task: asyncio.Task[None] | None = None
        self._wakeup: asyncio.Event | None = None
        self.ticks = 0
        self.late_ticks = 0
        self.reanchors = 0
        self.max_lateness = 0.0

    def add(self, pacer: Pacer) -> None:
        self._pacers.add(pacer)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="frame-clock")

    def discard(self, pacer: Pacer) -> None:
        self._pacers.discard(pacer)

    async def close(self) -> None:
        self._pacers.clear()
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    async def _run(self) -> None:
        clock = self.clock
        start = clock.now()
        n = 0
        while self._pacers:
            n += 1
            deadline = start + n * self.period
            await clock.sleep_until(deadline)
            now = clock.now()
            late = now - deadline
            self.ticks += 1
            if late > self.max_lateness:
                self.max_lateness = late
            behind = int(late / self.period)
            if behind > MAX_CATCHUP_FRAMES:
                # a stall longer than the catch-up budget: keep the cadence
                # from here rather than bursting a backlog into the PBX
                self.reanchors += 1
                logger.warning(log.kv(event="clock_stall", late_ms=round(late * 1000, 1)))
                start = now - n * self.period
                behind = 0
            elif behind:
                self.late_ticks += 1
                n += behind
            for pacer in tuple(self._pacers):
                try:
                    pacer.tick(now)
                    if behind:
                        pacer.catch_up(now, behind)
                except Exception:  # a broken call must not stop the clock
                    logger.exception(log.kv(event="pacer_error"))
                    self._pacers.discard(pacer)


class ChunkPacer(Pacer):
    """For a PBX that plays agent audio from chunks it is handed (FreeSWITCH's
    mod_audio_stream writes each message to a file that is then played).

    Each hand-over costs a seam: measured on FreeSWITCH 1.10, 100-180 ms of
    silence between two queued file playbacks. So this pacer sends few, long
    chunks: when the PBX is (nearly) idle it hands over everything queued, up
    to ``max_chunk_frames``, as soon as at least ``min_chunk_frames`` are
    queued or the queue stopped growing (the reply's audio is complete).
    Barge-in cuts at once whatever the chunk length (the PBX breaks its
    playback), and nothing is sent while idle.

    ``send(pcm)`` gets one chunk, handed over at the clock time of the tick.
    """

    def __init__(
        self,
        sample_rate: int,
        send: Callable[[bytes], None],
        min_chunk_frames: int = 10,
        max_chunk_frames: int = 250,
        low_water_frames: int = 4,
        seam_s: float = 0.15,
    ) -> None:
        super().__init__(sample_rate, lambda _pcm: None)
        self._send_chunk = send
        self.min_chunk_frames = min_chunk_frames
        self.max_chunk_frames = max_chunk_frames
        self.low_water = low_water_frames * FRAME_MS / 1000
        self.seam_s = seam_s
        #: clock time the PBX will have played everything handed to it
        self.play_end = 0.0
        self.chunks_sent = 0
        self._last_len = 0
        # frames handed over and not yet played, with when they will play:
        # (play time, pcm, the playout it belongs to, the playout it ends)
        self._held: collections.deque[tuple[float, bytes, Playout | None, Playout | None]] = (
            collections.deque()
        )

    @property
    def speaking(self) -> bool:
        return bool(self._queue) or bool(self._held)

    def ahead(self, now: float) -> float:
        """Seconds of audio the PBX holds that it has not played yet."""
        return max(0.0, self.play_end - now) if self._held else 0.0

    def tick(self, now: float) -> None:
        self.frames_sent += 1
        self._settle(now)
        queued = len(self._queue)
        growing = queued > self._last_len
        self._last_len = queued
        if self.paused or not queued or self.ahead(now) > self.low_water:
            return
        if queued < self.min_chunk_frames and growing:
            return  # more of this reply is coming: one chunk, not many seams
        self._hand_over(now, min(self.max_chunk_frames, queued))
        self._last_len = len(self._queue)

    def catch_up(self, now: float, frames: int) -> None:
        self.frames_sent += frames

    def _hand_over(self, now: float, n: int) -> None:
        period = FRAME_MS / 1000
        t = self.play_end + self.seam_s if self.ahead(now) > 0 else now
        out = bytearray()
        for _ in range(n):
            # a playout starts when it goes on the wire; the PBX plays it at once
            pcm, owner, marker = self._take(now)
            self._held.append((t, pcm, owner, marker))
            out += pcm
            t += period
        self.play_end = t
        self.audio_frames_sent += n
        self.last_audio_sent_at = now
        self.chunks_sent += 1
        self._send_chunk(bytes(out))

    def _settle(self, now: float) -> None:
        """Account for what the PBX has played by now."""
        period = FRAME_MS / 1000
        held = self._held
        while held and held[0][0] + period <= now:
            at, pcm, owner, marker = held.popleft()
            if self.monitor is not None:
                self.monitor(pcm, at)
            if owner is not None:
                owner.sent += 1
            if marker is not None and not marker.done.done():
                marker.done.set_result(True)

    def clear(self) -> int:
        dropped = super().clear() + len(self._held)
        for _, _, owner, marker in self._held:
            for p in (owner, marker):
                if p is not None and not p.done.done():
                    p.done.set_result(False)
        self._held.clear()
        self.play_end = 0.0
        return dropped

    def take_back(self, now: float) -> int:
        """The PBX is told to stop playing: what it had not played goes back
        to the front of the queue, with its playouts, for a later resume."""
        self._settle(now)
        held = list(self._held)
        self._held.clear()
        self.play_end = 0.0
        owners: list[Playout] = []
        for _, pcm, owner, marker in reversed(held):
            self._queue.appendleft((pcm, marker))
            if owner is not None and owner not in owners and owner not in self._pending:
                owners.append(owner)
        for owner in owners:  # reversed order above: oldest ends up first
            self._pending.appendleft(owner)
        return len(held)
