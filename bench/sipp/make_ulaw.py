"""Turn a WAV into the raw 8 kHz mu-law file that SIPp's rtp_stream plays.

SIPp 3.6.1 ``<exec rtp_stream="FILE,LOOPS,0"/>`` sends the file's bytes as
they are, 160 per 20 ms packet: no header is parsed (a .wav header would go
out as noise), and a last partial packet is filled from the start of the
file. So the output here is headerless G.711 mu-law, padded with silence to
a whole number of packets.

    python bench/sipp/make_ulaw.py in.wav out.ul [--channel 0] [--start S] [--end S]
    python bench/sipp/make_ulaw.py --silence 1.0 silence.ul

Prints the duration in ms (what the caller scenario's ``question_ms`` wants).
"""

from __future__ import annotations

import argparse
import wave
from pathlib import Path

import numpy as np

RATE = 8000
PACKET = 160  # bytes (= samples) per 20 ms packet
SILENCE = 0xFF  # mu-law code for 0


def ulaw_encode(pcm: np.ndarray) -> np.ndarray:
    """G.711 mu-law encode int16 samples (the classic 14-bit reference coder)."""
    x = pcm.astype(np.int32) >> 2  # 14-bit, arithmetic shift as in the reference
    sign = np.where(x < 0, 0x80, 0)
    mag = np.minimum(np.abs(x), 8159) + 0x21  # clip and bias
    mag = np.minimum(mag, 0x1FFF)  # top of segment 7
    exp = np.floor(np.log2(mag)).astype(np.int32) - 5  # segment 0..7
    mant = (mag >> (exp + 1)) & 0x0F
    out: np.ndarray = (~(sign | (exp << 4) | mant) & 0xFF).astype(np.uint8)
    return out


def read_wav(path: Path, channel: int) -> np.ndarray:
    """One channel of a 16-bit PCM WAV, resampled to 8 kHz if needed."""
    with wave.open(str(path)) as w:
        if w.getsampwidth() != 2:
            raise SystemExit(f"{path}: need 16-bit PCM")
        data = np.frombuffer(w.readframes(w.getnframes()), "<i2")
        data = data.reshape(-1, w.getnchannels())[:, channel]
        rate = w.getframerate()
    if rate != RATE:  # plain linear interpolation is enough for a test prompt
        n = int(len(data) * RATE / rate)
        data = np.interp(np.arange(n) * rate / RATE, np.arange(len(data)), data)
    return data.astype(np.int16)


def write_ulaw(path: Path, codes: np.ndarray) -> int:
    """Pad to whole packets, write, return the duration in ms."""
    pad = (-len(codes)) % PACKET
    codes = np.concatenate([codes, np.full(pad, SILENCE, np.uint8)])
    path.write_bytes(codes.tobytes())
    return len(codes) * 1000 // RATE


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("paths", nargs="+", help="IN.wav OUT.ul, or OUT.ul with --silence")
    ap.add_argument("--channel", type=int, default=0)
    ap.add_argument("--start", type=float, default=0.0, help="seconds")
    ap.add_argument("--end", type=float, default=None, help="seconds")
    ap.add_argument(
        "--silence", type=float, default=None, help="write this many seconds of silence"
    )
    a = ap.parse_args()
    if a.silence is not None:
        ms = write_ulaw(Path(a.paths[-1]), np.full(int(a.silence * RATE), SILENCE, np.uint8))
    else:
        pcm = read_wav(Path(a.paths[0]), a.channel)
        end = len(pcm) if a.end is None else int(a.end * RATE)
        ms = write_ulaw(Path(a.paths[1]), ulaw_encode(pcm[int(a.start * RATE) : end]))
    print(ms)


if __name__ == "__main__":
    main()
