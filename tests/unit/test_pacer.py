"""Outbound pacing on a virtual clock: exact, drift-free, interruptible."""

from __future__ import annotations

import asyncio

import pytest

from voiceos_switch.audio.clock import VirtualClock
from voiceos_switch.audio.pacer import FrameClock, Pacer


class Wire:
    """Records each frame written, with the virtual time it was written."""

    def __init__(self, clock: VirtualClock) -> None:
        self.clock = clock
        self.frames: list[tuple[float, bytes]] = []

    def __call__(self, pcm: bytes) -> None:
        self.frames.append((self.clock.now(), pcm))


def speech(n_frames: int, rate: int = 8000, value: int = 1) -> bytes:
    return (value.to_bytes(2, "little", signed=True)) * (rate // 50) * n_frames


async def start(rate: int = 8000, lead: int = 0) -> tuple[VirtualClock, FrameClock, Pacer, Wire]:
    vclock = VirtualClock()
    fclock = FrameClock(vclock)
    wire = Wire(vclock)
    pacer = Pacer(rate, wire, lead_frames=lead)
    fclock.add(pacer)
    await asyncio.sleep(0)
    return vclock, fclock, pacer, wire


async def test_one_frame_per_20ms_and_silence_when_idle() -> None:
    vclock, fclock, pacer, wire = await start()
    await vclock.advance(1.0)
    assert len(wire.frames) == 50
    assert all(pcm == bytes(320) for _, pcm in wire.frames)
    times = [t for t, _ in wire.frames]
    assert all(abs((b - a) - 0.02) < 1e-9 for a, b in zip(times, times[1:], strict=False))
    await fclock.close()


async def test_no_drift_over_ten_minutes() -> None:
    vclock, fclock, pacer, wire = await start()
    start_t = vclock.now()
    await vclock.advance(600.0)
    assert len(wire.frames) == 30_000
    # frame n goes out at start + n * 20 ms exactly, not a sum of sleeps
    assert wire.frames[-1][0] == pytest.approx(start_t + 30_000 * 0.02, abs=1e-6)
    await fclock.close()


async def test_audio_is_sent_in_order_then_silence_and_playout_completes() -> None:
    vclock, fclock, pacer, wire = await start()
    playout = pacer.enqueue(speech(10, value=7))
    assert playout.frames == 10
    await vclock.advance(0.1)
    assert not playout.done.done()
    await vclock.advance(0.2)
    assert await playout.wait() is True
    sent = [pcm for _, pcm in wire.frames]
    assert sent[:10] == [speech(1, value=7)] * 10
    assert sent[10:] == [bytes(320)] * (len(sent) - 10)
    await fclock.close()


async def test_partial_last_frame_is_padded_with_silence() -> None:
    vclock, fclock, pacer, wire = await start(rate=16000)
    pacer.enqueue(b"\x01\x00" * 100)  # 100 samples, a frame is 320
    await vclock.advance(0.02)
    pcm = wire.frames[0][1]
    assert len(pcm) == 640 and pcm[:200] == b"\x01\x00" * 100 and pcm[200:] == bytes(440)
    await fclock.close()


async def test_clear_stops_audio_on_the_next_frame_and_reports_what_played() -> None:
    vclock, fclock, pacer, wire = await start()
    playout = pacer.enqueue(speech(100, value=3))
    await vclock.advance(0.2)
    dropped = pacer.clear()
    assert dropped == 90
    assert await playout.wait() is False
    assert playout.interrupted and playout.sent == 10 and playout.sent_ms == 200
    n_before = len(wire.frames)
    await vclock.advance(0.02)
    assert wire.frames[n_before][1] == bytes(320)  # silence immediately
    await fclock.close()


async def test_lead_frames_prime_at_most_three_ahead() -> None:
    with pytest.raises(ValueError):
        Pacer(8000, lambda b: None, lead_frames=4)
    vclock, fclock, pacer, wire = await start(lead=3)
    await vclock.advance(0.02)
    assert len(wire.frames) == 4
    await vclock.advance(0.2)
    assert len(wire.frames) == 14  # then exactly one per period
    await fclock.close()


class StallingClock(VirtualClock):
    """Wakes late once, as a loop blocked by other work would."""

    def __init__(self, stall_at: int, stall_s: float) -> None:
        super().__init__()
        self.calls = 0
        self.stall_at, self.stall_s = stall_at, stall_s

    async def sleep_until(self, deadline: float) -> None:
        self.calls += 1
        if self.calls == self.stall_at:
            deadline += self.stall_s
        await super().sleep_until(deadline)


@pytest.mark.parametrize(("stall_s", "expect_catchup"), [(0.05, True), (0.5, False)])
async def test_after_a_stall_catch_up_a_little_or_reanchor(
    stall_s: float, expect_catchup: bool
) -> None:
    vclock = StallingClock(stall_at=5, stall_s=stall_s)
    fclock = FrameClock(vclock)
    wire = Wire(vclock)
    fclock.add(Pacer(8000, wire))
    await asyncio.sleep(0)
    await vclock.advance(2.0)
    if expect_catchup:
        assert fclock.late_ticks == 1 and fclock.reanchors == 0
        assert len(wire.frames) == 100  # the schedule is kept
    else:
        assert fclock.reanchors == 1
        # no burst into the PBX: never more than 1 + catch-up frames at one instant
        times = [t for t, _ in wire.frames]
        assert max(times.count(t) for t in set(times)) <= 4
    await fclock.close()


async def test_one_clock_serves_many_calls_and_forgets_ended_ones() -> None:
    vclock = VirtualClock()
    fclock = FrameClock(vclock)
    wires = [Wire(vclock) for _ in range(50)]
    pacers = [Pacer(8000, w) for w in wires]
    for p in pacers:
        fclock.add(p)
    await asyncio.sleep(0)
    await vclock.advance(0.2)
    for p in pacers[:25]:
        fclock.discard(p)
    await vclock.advance(0.2)
    assert {len(w.frames) for w in wires[:25]} == {10}
    assert {len(w.frames) for w in wires[25:]} == {20}
    await fclock.close()


async def test_a_failing_writer_is_dropped_without_stopping_the_clock() -> None:
    vclock = VirtualClock()
    fclock = FrameClock(vclock)

    def broken(_: bytes) -> None:
        raise OSError("socket gone")

    good = Wire(vclock)
    fclock.add(Pacer(8000, broken))
    fclock.add(Pacer(8000, good))
    await asyncio.sleep(0)
    await vclock.advance(0.1)
    assert len(good.frames) == 5
    await fclock.close()
