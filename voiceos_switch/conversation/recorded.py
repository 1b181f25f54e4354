"""Recorded caller audio through the live call's listening and emotion
reading: the same listener (VAD, the silence rule of the balanced style,
the recogniser) cuts it into utterances and the same reader scores them,
with the caller's baseline taken from the start of the recording.

``voiceos-switch emotion`` and the emotion benchmark use it, so what they
report is what a live call would have seen.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..audio.pcm import frame_bytes
from ..providers.emotion import Emotion, EmotionReader, Reading
from .listener import Listener, ListenerEvent, Phase, STTLike, TurnEnded, VADLike

#: silence fed after the recording, so its last utterance ends
TAIL_S = 2.0


@dataclass
class Utterance:
    turn: int
    start_s: float
    end_s: float
    text: str
    reading: Reading
    events: list[Emotion] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        r = self.reading
        return {
            "turn": self.turn,
            "start_s": round(self.start_s, 2),
            "end_s": round(self.end_s, 2),
            "text": self.text,
            "scores": {k: round(v, 3) for k, v in r.scores.items()},
            "confidence": round(r.confidence, 3),
            "cues": list(r.cues),
            "events": [e.as_dict() for e in self.events],
            "features": {k: round(v, 3) for k, v in r.features.items()},
            "score_ms": round(r.ms, 2),
        }


async def read_recording(
    pcm: bytes,
    rate: int,
    stt: STTLike,
    *,
    vad: VADLike | None = None,
    reader: EmotionReader | None = None,
) -> list[Utterance]:
    """Every utterance of a recording (PCM16 mono at ``rate``), scored."""
    if vad is None:
        from ..providers.vad import VADStream

        vad = VADStream(rate)
    reader = reader or EmotionReader(rate)
    ended: list[TurnEnded] = []
    starts: dict[int, float] = {}

    def on_event(event: ListenerEvent) -> None:
        if isinstance(event, TurnEnded):
            ended.append(event)

    listener = Listener(rate, vad=vad, stt=stt, turn_model=None, on_event=on_event)
    size = frame_bytes(rate)
    audio = pcm[: len(pcm) // size * size] + bytes(int(TAIL_S * rate) * 2 // size * size)
    utterances: list[Utterance] = []
    done = 0
    was_speaking = False
    for i in range(0, len(audio), size):
        frame = audio[i : i + size]
        await listener.feed(frame)
        speaking = listener.phase is not Phase.QUIET
        if speaking and listener.turn not in starts:
            starts[listener.turn] = listener.audio_ms / 1000
        reader.follow(frame, speaking, listener.turn)
        if not speaking and was_speaking:
            # a live caller's next turn comes after this one's transcript
            # (a decode takes a tenth of a second): so here
            await listener.settled()
        was_speaking = speaking
        done = _score(reader, ended, done, starts, utterances)
    await listener.settled()
    _score(reader, ended, done, starts, utterances)
    listener.close()
    return utterances


def _score(
    reader: EmotionReader,
    ended: list[TurnEnded],
    done: int,
    starts: dict[int, float],
    out: list[Utterance],
) -> int:
    for event in ended[done:]:
        reading = reader.read(event.turn, event.text)
        events = reader.commit(reading)
        start = starts.get(event.turn, 0.0)
        out.append(
            Utterance(event.turn, start, event.speech_end_ms / 1000, event.text, reading, events)
        )
    return len(ended)
