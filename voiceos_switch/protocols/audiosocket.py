"""Sans-I/O codec for Asterisk AudioSocket.

Framing in both directions: ``kind:u8 | length:u16 big-endian | payload``.
The parser is fed arbitrary chunks of a TCP stream and returns whole frames;
it never touches a socket or an event loop.
"""

from __future__ import annotations

import enum
import struct
import uuid
from dataclasses import dataclass

HEADER = struct.Struct(">BH")
HEADER_SIZE = HEADER.size

#: Largest payload the parser accepts. 192 kHz audio is 7680 bytes per 20 ms;
#: anything far above that is a broken or hostile peer.
DEFAULT_MAX_PAYLOAD = 16384

DTMF_DIGITS = frozenset("0123456789*#ABCD")


class Kind(enum.IntEnum):
    HANGUP = 0x00
    UUID = 0x01
    DTMF = 0x03
    AUDIO_8K = 0x10
    AUDIO_12K = 0x11
    AUDIO_16K = 0x12
    AUDIO_24K = 0x13
    AUDIO_32K = 0x14
    AUDIO_44K = 0x15
    AUDIO_48K = 0x16
    AUDIO_96K = 0x17
    AUDIO_192K = 0x18
    ERROR = 0xFF


AUDIO_RATES: dict[int, int] = {
    Kind.AUDIO_8K: 8000,
    Kind.AUDIO_12K: 12000,
    Kind.AUDIO_16K: 16000,
    Kind.AUDIO_24K: 24000,
    Kind.AUDIO_32K: 32000,
    Kind.AUDIO_44K: 44100,
    Kind.AUDIO_48K: 48000,
    Kind.AUDIO_96K: 96000,
    Kind.AUDIO_192K: 192000,
}
RATE_KINDS: dict[int, int] = {rate: kind for kind, rate in AUDIO_RATES.items()}


class ProtocolError(Exception):
    """The peer sent something that is not valid AudioSocket."""


@dataclass(frozen=True, slots=True)
class Hangup:
    pass


@dataclass(frozen=True, slots=True)
class CallId:
    id: uuid.UUID


@dataclass(frozen=True, slots=True)
class Dtmf:
    digit: str


@dataclass(frozen=True, slots=True)
class Audio:
    pcm: bytes
    sample_rate: int


@dataclass(frozen=True, slots=True)
class Error:
    code: int | None


Frame = Hangup | CallId | Dtmf | Audio | Error


def encode(frame: Frame) -> bytes:
    """Serialise one frame."""
    if isinstance(frame, Audio):
        kind = RATE_KINDS.get(frame.sample_rate)
        if kind is None:
            raise ValueError(f"AudioSocket has no kind for {frame.sample_rate} Hz")
        if len(frame.pcm) % 2:
            raise ValueError("PCM16 payload must have an even length")
        return _frame(kind, frame.pcm)
    if isinstance(frame, Hangup):
        return _frame(Kind.HANGUP, b"")
    if isinstance(frame, CallId):
        return _frame(Kind.UUID, frame.id.bytes)
    if isinstance(frame, Dtmf):
        if frame.digit not in DTMF_DIGITS:
            raise ValueError(f"not a DTMF digit: {frame.digit!r}")
        return _frame(Kind.DTMF, frame.digit.encode("ascii"))
    if isinstance(frame, Error):
        return _frame(Kind.ERROR, b"" if frame.code is None else bytes([frame.code]))
    raise TypeError(f"not an AudioSocket frame: {frame!r}")


def _frame(kind: int, payload: bytes) -> bytes:
    if len(payload) > 0xFFFF:
        raise ValueError("payload longer than 65535 bytes")
    return HEADER.pack(kind, len(payload)) + payload


def encode_audio(pcm: bytes, sample_rate: int) -> bytes:
    """Fast path for the pacer: one audio frame, no dataclass."""
    return HEADER.pack(RATE_KINDS[sample_rate], len(pcm)) + pcm


class Parser:
    """Incremental parser. ``feed`` returns the frames completed by a chunk.

    After a :class:`ProtocolError` the parser is dead: the stream has lost
    framing and the connection must be closed.
    """

    def __init__(self, max_payload: int = DEFAULT_MAX_PAYLOAD) -> None:
        self._buf = bytearray()
        self._max_payload = max_payload
        self._failed: ProtocolError | None = None

    @property
    def buffered(self) -> int:
        """Bytes of an incomplete frame held back."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[Frame]:
        if self._failed is not None:
            raise self._failed
        self._buf += data
        frames: list[Frame] = []
        pos = 0
        buf = self._buf
        try:
            while len(buf) - pos >= HEADER_SIZE:
                kind, length = HEADER.unpack_from(buf, pos)
                if length > self._max_payload:
                    raise ProtocolError(
                        f"frame kind 0x{kind:02x} announces {length} bytes, "
                        f"over the {self._max_payload}-byte limit"
                    )
                if kind not in _KNOWN:
                    raise ProtocolError(f"unknown frame kind 0x{kind:02x}")
                end = pos + HEADER_SIZE + length
                if len(buf) < end:
                    break
                frames.append(_decode(kind, bytes(buf[pos + HEADER_SIZE : end])))
                pos = end
        except ProtocolError as exc:
            self._failed = exc
            del buf[:]
            raise
        del buf[:pos]
        return frames


_KNOWN = frozenset(int(k) for k in Kind)


def _decode(kind: int, payload: bytes) -> Frame:
    rate = AUDIO_RATES.get(kind)
    if rate is not None:
        if len(payload) % 2:
            raise ProtocolError(f"audio frame with odd length {len(payload)}")
        return Audio(payload, rate)
    if kind == Kind.HANGUP:
        if payload:
            raise ProtocolError("hangup frame with a payload")
        return Hangup()
    if kind == Kind.UUID:
        if len(payload) != 16:
            raise ProtocolError(f"call id frame of {len(payload)} bytes, expected 16")
        return CallId(uuid.UUID(bytes=payload))
    if kind == Kind.DTMF:
        digit = payload.decode("ascii", "replace")
        if len(payload) != 1 or digit not in DTMF_DIGITS:
            raise ProtocolError(f"bad DTMF payload {payload!r}")
        return Dtmf(digit)
    # Kind.ERROR
    if len(payload) > 1:
        raise ProtocolError(f"error frame of {len(payload)} bytes")
    return Error(payload[0] if payload else None)
