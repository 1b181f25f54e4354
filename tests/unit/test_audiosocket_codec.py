"""The AudioSocket codec, tested with bytes alone."""

from __future__ import annotations

import random
import uuid
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from voiceos_switch.protocols import audiosocket as p

DATA = Path(__file__).parent.parent / "data"

frames = st.one_of(
    st.just(p.Hangup()),
    st.uuids().map(p.CallId),
    st.sampled_from(sorted(p.DTMF_DIGITS)).map(p.Dtmf),
    st.builds(
        p.Audio,
        st.integers(0, 400)
        .map(lambda n: bytes(range(256)) * (n // 128) + bytes(n % 2 * 0))
        .map(lambda b: b[: len(b) // 2 * 2]),
        st.sampled_from(sorted(p.RATE_KINDS)),
    ),
    st.one_of(st.none(), st.integers(0, 255)).map(p.Error),
)


def feed_in_chunks(parser: p.Parser, data: bytes, cuts: list[int]) -> list[p.Frame]:
    out: list[p.Frame] = []
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    for a, b in zip(points, points[1:], strict=False):
        out += parser.feed(data[a:b])
    return out


@given(st.lists(frames, max_size=30), st.lists(st.integers(0, 10_000), max_size=40))
def test_round_trip_under_any_tcp_chunking(msgs: list[p.Frame], cuts: list[int]) -> None:
    data = b"".join(p.encode(m) for m in msgs)
    parser = p.Parser()
    assert feed_in_chunks(parser, data, cuts) == msgs
    assert parser.buffered == 0


@given(st.binary(max_size=2000), st.lists(st.integers(0, 2000), max_size=20))
@settings(max_examples=500)
def test_garbage_is_either_frames_or_a_protocol_error(junk: bytes, cuts: list[int]) -> None:
    parser = p.Parser()
    try:
        frames_out = feed_in_chunks(parser, junk, cuts)
    except p.ProtocolError:
        with pytest.raises(p.ProtocolError):
            parser.feed(b"\x10\x00\x00")  # a dead parser stays dead
        return
    # whatever parsed must re-encode to the prefix of the input it consumed
    consumed = b"".join(p.encode(f) for f in frames_out)
    assert junk.startswith(consumed)
    assert parser.buffered == len(junk) - len(consumed)


def test_random_fuzz_never_raises_anything_else() -> None:
    rng = random.Random(1234)
    for _ in range(3000):
        parser = p.Parser(max_payload=1024)
        blob = bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 300)))
        try:
            parser.feed(blob)
        except p.ProtocolError:
            pass


def test_oversized_frame_is_rejected_from_the_header_alone() -> None:
    parser = p.Parser(max_payload=1000)
    with pytest.raises(p.ProtocolError, match="over the 1000-byte limit"):
        parser.feed(b"\x10\xff\xff")  # no payload needed to know it is too big


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x42\x00\x00", "unknown frame kind 0x42"),
        (b"\x02\x00\x06" + bytes(6), "unknown frame kind 0x02"),
        (b"\x10\x00\x03abc", "odd length"),
        (b"\x01\x00\x04abcd", "expected 16"),
        (b"\x03\x00\x01x", "bad DTMF"),
        (b"\x03\x00\x02" + b"12", "bad DTMF"),
        (b"\x00\x00\x01x", "hangup frame with a payload"),
        (b"\xff\x00\x02ab", "error frame of 2 bytes"),
    ],
)
def test_malformed_frames(data: bytes, message: str) -> None:
    with pytest.raises(p.ProtocolError, match=message):
        p.Parser().feed(data)


def test_error_frame_with_and_without_code() -> None:
    assert p.Parser().feed(b"\xff\x00\x00\xff\x00\x01\x02") == [p.Error(None), p.Error(2)]


def test_encoder_refuses_what_asterisk_would_reject() -> None:
    with pytest.raises(ValueError):
        p.encode(p.Audio(b"\x00" * 3, 8000))
    with pytest.raises(ValueError):
        p.encode(p.Audio(b"\x00" * 4, 11025))
    with pytest.raises(ValueError):
        p.encode(p.Dtmf("x"))
    assert p.encode_audio(b"\x01\x02", 16000) == b"\x12\x00\x02\x01\x02"


@pytest.mark.parametrize(
    ("name", "rate", "size", "digits"),
    [
        ("asterisk22-app-8k-dtmf.audiosocket", 8000, 320, ["5", "#"]),
        ("asterisk22-chan-slin16-dtmf.audiosocket", 16000, 640, ["1"]),
    ],
)
def test_captures_from_real_asterisk(name: str, rate: int, size: int, digits: list[str]) -> None:
    raw = (DATA / name).read_bytes()
    parser = p.Parser()
    got = feed_in_chunks(parser, raw, list(range(0, len(raw), 997)))
    assert parser.buffered == 0
    assert isinstance(got[0], p.CallId) and got[0].id.version == 4
    audio = [f for f in got if isinstance(f, p.Audio)]
    assert len(audio) > 40
    assert {f.sample_rate for f in audio} == {rate}
    # nearly all frames are 20 ms; the end of a played file arrives as a short one
    full = [f for f in audio if len(f.pcm) == size]
    assert len(full) >= len(audio) - 2
    assert all(0 < len(f.pcm) <= size for f in audio)
    assert [f.digit for f in got if isinstance(f, p.Dtmf)] == digits
    # Asterisk ends with EOF, never a hangup frame
    assert not any(isinstance(f, p.Hangup) for f in got)
    # and every frame re-encodes to the bytes Asterisk sent
    assert b"".join(p.encode(f) for f in got) == raw


def test_call_id_round_trip_is_the_binary_uuid() -> None:
    u = uuid.UUID("214cde38-0ae9-4892-9d84-d0d4df2e4a83")
    assert p.encode(p.CallId(u)) == b"\x01\x00\x10" + u.bytes
