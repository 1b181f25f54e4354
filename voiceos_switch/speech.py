"""One handle per utterance the agent speaks.

Every way the agent speaks (a model reply, the greeting, a handler's
``call.say``, a tool filler, a goodbye) is a :class:`SpeechHandle`: it owns
the utterance's generation task and its playout, so the same barge-in and
the same "what was heard" rule apply to all of them.

A handle may start *held*: its audio is made (the model writes, the voice
synthesises) but kept back, because the caller may not have finished. When
the turn is confirmed, :meth:`SpeechHandle.release` hands everything made so
far to the pacer at once, and what follows goes straight through; if the
caller goes on, :meth:`SpeechHandle.cancel` drops it without a sound.
"""

from __future__ import annotations

import asyncio
import enum
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field

from .audio.pacer import Playout
from .media import CallMedia


class SpeechState(enum.Enum):
    HELD = "held"  # being made, not audible: the caller may not be done
    PLAYING = "playing"  # handed to the pacer (audible, or about to be)
    PAUSED = "paused"  # the caller may be interrupting: silence, queue kept
    DONE = "done"  # every frame played
    INTERRUPTED = "interrupted"  # cut short; ``heard`` says how far it got
    CANCELLED = "cancelled"  # dropped before a frame was heard


_ids = itertools.count(1)


@dataclass
class _Chunk:
    text: str
    pcm: list[bytes] = field(default_factory=list)
    playouts: list[Playout] = field(default_factory=list)
    complete: bool = False

    @property
    def frames(self) -> int:
        return sum(p.frames for p in self.playouts)

    @property
    def sent(self) -> int:
        return sum(p.sent for p in self.playouts)


class SpeechHandle:
    """An utterance of the agent's: text chunks with their audio, played in
    order on one call's media."""

    def __init__(
        self,
        media: CallMedia,
        *,
        source: str,
        held: bool = False,
        on_first_frame: Callable[[float], None] | None = None,
    ) -> None:
        self.id = next(_ids)
        self.media = media
        self.source = source
        self.state = SpeechState.HELD if held else SpeechState.PLAYING
        self.on_first_frame = on_first_frame
        self.first_frame_at: float | None = None
        self.task: asyncio.Task[None] | None = None
        self._chunks: list[_Chunk] = []
        self._finished = False
        #: audio shorter than a frame, carried into the next piece: the pacer
        #: pads a partial frame with silence, which would click mid-word
        self._carry = b""
        self._frame = media.sample_rate * 2 // 50
        self._done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self.released = asyncio.Event()
        if not held:
            self.released.set()

    # ---------------------------------------------------------------- making
    def begin(self, text: str) -> None:
        """A new chunk of text; its audio follows with :meth:`audio`."""
        if self._chunks and not self._chunks[-1].complete:
            self._chunks[-1].complete = True
        self._chunks.append(_Chunk(text))

    def audio(self, pcm: bytes) -> None:
        """Audio of the current chunk, as the voice makes it."""
        if self.ended or not pcm:
            return
        data = self._carry + pcm
        whole = len(data) // self._frame * self._frame
        self._carry = data[whole:]
        if whole:
            self._add(data[:whole])

    def _add(self, pcm: bytes) -> None:
        if not self._chunks:
            self._chunks.append(_Chunk(""))
        chunk = self._chunks[-1]
        if self.state is SpeechState.HELD:
            chunk.pcm.append(pcm)
        else:
            chunk.playouts.append(self._play(pcm))

    def say(self, text: str, pcm: bytes) -> None:
        """A whole chunk at once."""
        self.begin(text)
        self.audio(pcm)

    def finish(self) -> None:
        """Nothing more will be added; the handle is done once it has played."""
        if self._finished:
            return
        self._finished = True
        if self._carry and not self.ended:
            self._add(self._carry)  # the last frame, padded
        self._carry = b""
        if self._chunks:
            self._chunks[-1].complete = True
        if self.state in (SpeechState.PLAYING, SpeechState.PAUSED):
            self._settle_when_played()

    # ------------------------------------------------------------ playing
    def _play(self, pcm: bytes) -> Playout:
        playout = self.media.send_audio(pcm)
        if self.first_frame_at is None:

            def started(at: float) -> None:
                if self.first_frame_at is None:
                    self.first_frame_at = at
                    if self.on_first_frame is not None:
                        self.on_first_frame(at)

            if playout.first_sent_at is not None:
                started(playout.first_sent_at)
            else:
                playout.on_start = started
        return playout

    def release(self) -> None:
        """The turn is confirmed: play what is made, and what comes next."""
        if self.state is not SpeechState.HELD:
            return
        self.state = SpeechState.PLAYING
        for chunk in self._chunks:
            for pcm in chunk.pcm:
                chunk.playouts.append(self._play(pcm))
            chunk.pcm.clear()
        self.released.set()
        if self._finished:
            self._settle_when_played()

    def _settle_when_played(self) -> None:
        playouts = [p for c in self._chunks for p in c.playouts]

        async def settle() -> None:
            results = [await p.wait() for p in playouts]
            if self.state in (SpeechState.PLAYING, SpeechState.PAUSED):
                self._end(SpeechState.DONE if all(results) else SpeechState.INTERRUPTED)

        if not playouts:
            self._end(SpeechState.DONE)
            return
        asyncio.ensure_future(settle())

    def pause(self) -> None:
        if self.state is SpeechState.PLAYING:
            self.state = SpeechState.PAUSED
            self.media.pause_output()

    def resume(self) -> None:
        if self.state is SpeechState.PAUSED:
            self.state = SpeechState.PLAYING
            self.media.resume_output()

    def interrupt(self) -> int:
        """Stop now (barge-in, hangup): queued audio is dropped, the making
        stops; returns the frames dropped."""
        if self.ended:
            return 0
        dropped = 0
        if self.state in (SpeechState.PLAYING, SpeechState.PAUSED):
            dropped = self.media.clear()
            self.media.resume_output()
        heard = self.heard_fraction > 0
        self._end(SpeechState.INTERRUPTED if heard else SpeechState.CANCELLED)
        return dropped

    def cancel(self) -> None:
        """Drop a held utterance without a sound (the caller went on)."""
        if self.state is SpeechState.HELD:
            self._end(SpeechState.CANCELLED)
        else:
            self.interrupt()

    def _end(self, state: SpeechState) -> None:
        if self.ended:
            return
        self.state = state
        if self.task is not None and not self.task.done():
            self.task.cancel()
        if not self._done.done():
            self._done.set_result(state is SpeechState.DONE)
        self.released.set()  # a maker waiting for the release stops waiting

    # ------------------------------------------------------------- reading
    @property
    def ended(self) -> bool:
        return self.state in (SpeechState.DONE, SpeechState.INTERRUPTED, SpeechState.CANCELLED)

    @property
    def held(self) -> bool:
        return self.state is SpeechState.HELD

    @property
    def audible(self) -> bool:
        """Handed to the pacer and not over: the caller hears it (or silence
        while it is paused)."""
        return self.state in (SpeechState.PLAYING, SpeechState.PAUSED)

    @property
    def ready(self) -> bool:
        """Audio of the first chunk is made (released, it plays on the next frame)."""
        return any(c.pcm or c.playouts for c in self._chunks)

    async def wait(self) -> bool:
        """True once every frame has played; False when cut short or dropped."""
        return await asyncio.shield(self._done)

    @property
    def planned_text(self) -> str:
        return " ".join(c.text for c in self._chunks if c.text)

    @property
    def heard_fraction(self) -> float:
        frames = sum(c.frames for c in self._chunks)
        return sum(c.sent for c in self._chunks) / frames if frames else 0.0

    @property
    def heard_text(self) -> str:
        """The words the caller heard: whole chunks played, then the played
        share of the chunk that was cut."""
        if self.state is SpeechState.DONE:
            return self.planned_text
        parts: list[str] = []
        for chunk in self._chunks:
            if not chunk.playouts:
                break
            frames = chunk.frames
            if chunk.complete and frames and chunk.sent >= frames:
                parts.append(chunk.text)
                continue
            parts.append(heard_prefix(chunk.text, chunk.sent / max(frames, 1)))
            break
        return " ".join(p for p in parts if p)


def heard_prefix(text: str, fraction: float) -> str:
    """The words of ``text`` a listener heard when ``fraction`` of it played."""
    words = text.split()
    keep = int(len(words) * max(0.0, min(1.0, fraction)))
    return " ".join(words[:keep])
