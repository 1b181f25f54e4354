"""The one media interface every PBX transport implements.

A transport turns a PBX's media protocol into a :class:`CallMedia`: a stream
of inbound events (caller audio, DTMF, the end) and three outbound actions
(send audio through the pacer, clear it for barge-in, hang up).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Protocol

from .audio.pacer import Playout


@dataclass(frozen=True, slots=True)
class AudioIn:
    """Caller audio: PCM16 LE mono at the call's rate, usually 20 ms."""

    pcm: bytes


@dataclass(frozen=True, slots=True)
class DtmfIn:
    digit: str


@dataclass(frozen=True, slots=True)
class MediaEnded:
    """The media session is over; ``reason`` says why, for the call record."""

    reason: str
    error: bool = False


MediaEvent = AudioIn | DtmfIn | MediaEnded


class CallMedia(Protocol):
    call_id: str
    pbx: str
    sample_rate: int

    def events(self) -> AsyncIterator[MediaEvent]:
        """Inbound events in order; ends after a :class:`MediaEnded`."""
        ...

    def send_audio(self, pcm: bytes) -> Playout:
        """Queue agent audio (PCM16 at ``sample_rate``) for paced playout."""
        ...

    def clear(self) -> int:
        """Drop queued agent audio at once (barge-in); returns frames dropped."""
        ...

    def pause_output(self) -> None:
        """Hold queued agent audio (send silence) without dropping it."""
        ...

    def resume_output(self) -> None:
        """Continue playing held agent audio."""
        ...

    async def hangup(self) -> None:
        """End the media session from our side, once the caller has heard
        what was sent."""
        ...

    async def finish_playing(self, timeout: float = 30.0) -> None:
        """Return once the caller has heard all agent audio sent so far (or
        after what is left to play plus a margin, at most ``timeout``)."""
        ...

    def monitor_output(self, callback: Callable[[bytes, float], None]) -> None:
        """Have ``callback(pcm, at)`` told of each agent frame as it is heard
        (the listener's echo estimate)."""
        ...

    @property
    def ended(self) -> bool: ...
