"""RTP on the loopback interface, timed by the kernel.

A packet socket on ``lo`` (AF_PACKET, cooked) with SO_TIMESTAMPNS gives each
packet the time the kernel received it, so this process's own scheduling
does not show up as jitter. A classic BPF filter in the kernel keeps only
IPv4 UDP packets with a source or destination port in the given range whose
payload looks like RTP (version 2), and drops the PACKET_OUTGOING copy that
``lo`` also shows (every packet is seen once going out, once coming in; the
incoming copy is kept). A background thread records, per stream (source,
destination, SSRC): kernel time, sequence number, RTP timestamp, payload
type, marker, and for PCMU the packet's level in dBFS.

    meter = RtpMeter(ports=range(41100, 41200))   # the caller's RTP ports
    meter.start(); ...; meter.stop()
    for s in meter.streams():                     # s.direction: "in"/"out"
        print(s.summary(), s.first_sound_after(t0))

Times are CLOCK_REALTIME seconds, comparable with ``time.time()``.
"in" = received by the caller (destination port in range), "out" = sent.

    python bench/rtpmeter.py --ports 41100-41199 --seconds 10
"""

from __future__ import annotations

import argparse
import ctypes
import socket
import struct
import threading
import time
from array import array
from dataclasses import dataclass

import numpy as np

ETH_P_IP = 0x0800
SOL_PACKET = 263
PACKET_STATISTICS = 6
PACKET_OUTGOING = 4
SO_ATTACH_FILTER = 26
SO_RCVBUFFORCE = 33
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # == SCM_TIMESTAMPNS
CLOCK_RATE = 8000  # G.711 / telephone-event
FLUSH_EVERY = 512  # packets between level computations


def _mulaw_table() -> np.ndarray:
    """The 256 G.711 mu-law codes decoded to 16-bit linear."""
    u = ~np.arange(256, dtype=np.int32) & 0xFF
    exp = (u >> 4) & 7
    mag = ((((u & 0x0F) << 3) + 0x84) << exp) - 0x84
    return np.where(u & 0x80, -mag, mag).astype(np.float64)


MULAW = _mulaw_table()
_SQ = (MULAW / 32768.0) ** 2  # squared full-scale sample, per code


def _bpf(lo: int, hi: int) -> list[tuple[int, int, int, int]]:
    """Classic BPF: keep incoming IPv4 UDP, a port in [lo, hi], RTP v2."""
    dst, rtp, drop = 10, 13, 17  # instruction indexes (16 accepts)

    def j(
        code: int, k: int, at: int, jt: int | None = None, jf: int | None = None
    ) -> tuple[int, int, int, int]:
        # jumps are relative to the next instruction; None = fall through
        return (
            code,
            (jt - at - 1) if jt is not None else 0,
            (jf - at - 1) if jf is not None else 0,
            k,
        )

    return [
        (0x20, 0, 0, 0xFFFFF004),  # 0  ld  pkttype (SKF_AD_OFF + SKF_AD_PKTTYPE)
        j(0x15, PACKET_OUTGOING, 1, jt=drop),  # 1  jeq OUTGOING -> drop
        (0x30, 0, 0, 9),  # 2  ldb [9]  ip protocol
        j(0x15, 17, 3, jf=drop),  # 3  jne UDP -> drop
        (0x28, 0, 0, 6),  # 4  ldh [6]  fragment offset
        j(0x45, 0x1FFF, 5, jt=drop),  # 5  jset frag -> drop
        (0xB1, 0, 0, 0),  # 6  ldxb 4*([0]&0xf)  ip header length
        (0x48, 0, 0, 0),  # 7  ldh [x+0]  source port
        j(0x35, lo, 8, jf=dst),  # 8  jge lo
        j(0x25, hi, 9, jt=dst, jf=rtp),  # 9  jgt hi
        (0x48, 0, 0, 2),  # 10 ldh [x+2]  destination port
        j(0x35, lo, 11, jf=drop),  # 11 jge lo
        j(0x25, hi, 12, jt=drop),  # 12 jgt hi
        (0x50, 0, 0, 8),  # 13 ldb [x+8]  first RTP byte
        (0x54, 0, 0, 0xC0),  # 14 and #0xc0  version bits
        j(0x15, 0x80, 15, jf=drop),  # 15 jeq v2
        (0x06, 0, 0, 0x40000),  # 16 accept (whole packet)
        (0x06, 0, 0, 0),  # 17 drop
    ]


class _Rec:
    """Growing per-stream columns (compact: array.array, no tuples)."""

    __slots__ = ("times", "seq", "ts", "pt", "levels")

    def __init__(self) -> None:
        self.times = array("d")
        self.seq = array("H")
        self.ts = array("I")
        self.pt = array("B")  # payload type | 0x80 if marker
        self.levels = array("f")


def _unwrap(x: np.ndarray, bits: int) -> np.ndarray:
    """Sequence numbers / timestamps made monotonic across wrap-around."""
    x = x.astype(np.int64)
    if len(x) < 2:
        return x
    m = 1 << bits
    d = np.diff(x)
    d = (d + m // 2) % m - m // 2  # signed step
    return np.concatenate([[x[0]], x[0] + np.cumsum(d)])


@dataclass
class Stream:
    """One RTP stream as seen on the wire (a snapshot, numpy columns)."""

    src: tuple[str, int]
    dst: tuple[str, int]
    ssrc: int
    direction: str  # "in": to the metered ports; "out": from them
    times: np.ndarray  # kernel receive time, s (CLOCK_REALTIME)
    seq: np.ndarray  # unwrapped sequence numbers (int64)
    ts: np.ndarray  # unwrapped RTP timestamps (int64)
    pt: np.ndarray  # payload type (uint8)
    marker: np.ndarray  # marker bit (bool)
    levels_db: np.ndarray  # dBFS per packet, NaN unless PCMU

    def __len__(self) -> int:
        return len(self.times)

    def _pairs(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Arrival gaps, expected gaps (ms) and a mask of clean steps:
        next sequence number, no marker (talkspurt restart), a forward RTP
        timestamp step of at most 200 ms, and not a telephone-event packet."""
        gap = np.diff(self.times) * 1000.0
        exp = np.diff(self.ts) * 1000.0 / CLOCK_RATE
        ok = (np.diff(self.seq) == 1) & ~self.marker[1:] & (exp > 0) & (exp <= 200)
        ok &= self.pt[1:] == self.pt[:-1]
        return gap, exp, ok

    def interarrival_jitter_ms(self) -> np.ndarray:
        """|arrival gap - packet time| per clean step, ms (packet time from
        the RTP timestamps, 20 ms for the usual G.711 stream)."""
        gap, exp, ok = self._pairs()
        out: np.ndarray = np.abs(gap - exp)[ok]
        return out

    def rfc3550_jitter_ms(self) -> np.ndarray:
        """The RFC 3550 running jitter estimate after each packet, ms."""
        if len(self) < 2:
            return np.zeros(len(self))
        d = np.abs(np.diff(self.times) * CLOCK_RATE - np.diff(self.ts))  # |D| in ticks
        j = np.empty(len(d) + 1)
        j[0] = acc = 0.0
        for i, di in enumerate(d):  # a recursive filter: plain loop
            acc += (di - acc) / 16.0
            j[i + 1] = acc
        return j * 1000.0 / CLOCK_RATE

    def lost(self) -> int:
        """Packets missing from the sequence-number range."""
        return (
            int(self.seq.max() - self.seq.min() + 1 - len(np.unique(self.seq))) if len(self) else 0
        )

    def _loud(self, threshold_db: float) -> np.ndarray:
        loud: np.ndarray = np.nan_to_num(self.levels_db, nan=-np.inf) > threshold_db
        return loud

    def first_sound_after(
        self, t: float, threshold_db: float = -40.0, hold: int = 1
    ) -> float | None:
        """Kernel time of the first packet at or after ``t`` louder than the
        threshold, starting a run of ``hold`` loud packets; None if none."""
        loud = self._loud(threshold_db) & (self.times >= t)
        if hold > 1:  # runs of `hold` consecutive loud packets
            run = np.convolve(loud.astype(np.int32), np.ones(hold, np.int32), "full")[hold - 1 :]
            loud = run >= hold
        idx = np.flatnonzero(loud)
        return float(self.times[idx[0]]) if len(idx) else None

    def last_sound_before(self, t: float, threshold_db: float = -40.0) -> float | None:
        """Kernel time of the last packet before ``t`` louder than the
        threshold (the end of that packet is +packet time); None if none."""
        idx = np.flatnonzero(self._loud(threshold_db) & (self.times < t))
        return float(self.times[idx[-1]]) if len(idx) else None

    def sound_segments(
        self, threshold_db: float = -40.0, min_gap_ms: float = 300.0
    ) -> list[tuple[float, float]]:
        """(first loud packet, last loud packet) times of each stretch of
        sound, bridging quiet gaps shorter than ``min_gap_ms``."""
        t = self.times[self._loud(threshold_db)]
        if not len(t):
            return []
        cut = np.flatnonzero(np.diff(t) * 1000.0 > min_gap_ms)
        starts = np.concatenate([[0], cut + 1])
        ends = np.concatenate([cut, [len(t) - 1]])
        return [(float(t[a]), float(t[b])) for a, b in zip(starts, ends, strict=True)]

    def summary(self) -> dict[str, object]:
        """Packets, rate, loss and jitter figures for a report."""
        jit = self.interarrival_jitter_ms()
        dur = float(self.times[-1] - self.times[0]) if len(self) > 1 else 0.0
        return {
            "src": f"{self.src[0]}:{self.src[1]}",
            "dst": f"{self.dst[0]}:{self.dst[1]}",
            "ssrc": f"{self.ssrc:08x}",
            "direction": self.direction,
            "packets": len(self),
            "seconds": round(dur, 3),
            "pps": round((len(self) - 1) / dur, 1) if dur else 0.0,
            "lost": self.lost(),
            "jitter_p50_ms": round(float(np.percentile(jit, 50)), 3) if len(jit) else None,
            "jitter_p99_ms": round(float(np.percentile(jit, 99)), 3) if len(jit) else None,
            "jitter_max_ms": round(float(jit.max()), 3) if len(jit) else None,
            "rfc3550_ms": round(float(self.rfc3550_jitter_ms()[-1]), 3) if len(self) else None,
        }


class RtpMeter:
    """Background capture of the RTP to and from a port range on ``lo``."""

    def __init__(
        self, ports: range | tuple[int, int], iface: str = "lo", rcvbuf: int = 64 << 20
    ) -> None:
        self.ports = ports if isinstance(ports, range) else range(ports[0], ports[1] + 1)
        self.iface = iface
        self.rcvbuf = rcvbuf
        self.drops = 0  # kernel drops (PACKET_STATISTICS), summed
        self.seen = 0  # packets the filter passed to the socket, summed
        self._recs: dict[tuple[bytes, int, int, int], _Rec] = {}
        self._pending: list[tuple[_Rec, bytes | None]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._sock: socket.socket | None = None

    def start(self) -> None:
        s = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_IP))
        try:
            s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, self.rcvbuf)  # root: past rmem_max
        except OSError:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.rcvbuf)
        prog = _bpf(min(self.ports), max(self.ports))
        buf = ctypes.create_string_buffer(b"".join(struct.pack("HBBI", *i) for i in prog))
        s.setsockopt(
            socket.SOL_SOCKET, SO_ATTACH_FILTER, struct.pack("HL", len(prog), ctypes.addressof(buf))
        )
        s.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        s.bind((self.iface, ETH_P_IP))
        s.settimeout(0.2)
        self._read_stats(s)  # reset the counters: count from here
        self.drops = self.seen = 0
        self._sock = s
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="rtpmeter", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop after reading what is already queued in the socket."""
        self._stop.set()
        if self._thread:
            self._thread.join()
            self._thread = None
        if self._sock:
            self._read_stats(self._sock)
            self._sock.close()
            self._sock = None

    def __enter__(self) -> RtpMeter:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def _read_stats(self, s: socket.socket) -> None:
        """PACKET_STATISTICS (reading it resets the kernel's counters)."""
        try:
            packets, drops = struct.unpack("II", s.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8))
        except OSError:
            return
        self.seen += packets
        self.drops += drops

    def _run(self) -> None:
        s = self._sock
        assert s is not None
        cmsg_space = socket.CMSG_SPACE(16)
        unpack_udp = struct.Struct("!HH").unpack_from
        unpack_rtp = struct.Struct("!BBHII").unpack_from
        ports = self.ports
        recs = self._recs
        pending = self._pending
        while True:
            try:
                data, anc, _flags, _addr = s.recvmsg(2048, cmsg_space)
            except TimeoutError:
                with self._lock:
                    self._flush()
                if self._stop.is_set():
                    return
                continue
            t = None
            for level, kind, cdata in anc:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                    sec, nsec = struct.unpack("qq", cdata[:16])
                    t = sec + nsec * 1e-9
            if t is None:
                t = time.time()
            ihl = (data[0] & 0x0F) * 4
            if len(data) < ihl + 20:
                continue
            sport, dport = unpack_udp(data, ihl)
            if sport not in ports and dport not in ports:  # range may have a step
                continue
            b0, b1, seq, ts, ssrc = unpack_rtp(data, ihl + 8)
            key = (data[12:20], sport, dport, ssrc)
            hdr = ihl + 8 + 12 + 4 * (b0 & 0x0F)  # RTP header with CSRCs
            pt = b1 & 0x7F
            with self._lock:
                rec = recs.get(key)
                if rec is None:
                    rec = recs[key] = _Rec()
                rec.times.append(t)
                rec.seq.append(seq)
                rec.ts.append(ts)
                rec.pt.append(b1)
                pending.append((rec, data[hdr:] if pt == 0 else None))
                if len(pending) >= FLUSH_EVERY:
                    self._flush()
            if self._stop.is_set():
                s.settimeout(0.05)  # drain what is queued, then the timeout ends it

    def _flush(self) -> None:
        """Levels of the pending packets, in one numpy pass (lock held)."""
        if not self._pending:
            return
        pay = [p for _, p in self._pending if p]
        levels: list[float] = []
        if pay:
            lens = np.fromiter((len(p) for p in pay), np.int64, len(pay))
            codes = np.frombuffer(b"".join(pay), np.uint8)
            sums = np.add.reduceat(_SQ[codes], np.concatenate([[0], np.cumsum(lens)[:-1]]))
            levels = (10.0 * np.log10(np.maximum(sums / lens, 1e-10))).tolist()  # floor -100 dBFS
        it = iter(levels)
        for rec, p in self._pending:
            rec.levels.append(next(it) if p else float("nan"))
        self._pending.clear()

    def streams(self, min_packets: int = 1) -> list[Stream]:
        """Snapshot of every stream seen so far (safe while running)."""
        out: list[Stream] = []
        with self._lock:
            self._flush()
            for (ips, sport, dport, ssrc), r in self._recs.items():
                if len(r.times) < min_packets:
                    continue
                pt = np.frombuffer(r.pt, np.uint8).copy()
                out.append(
                    Stream(
                        src=(socket.inet_ntoa(ips[:4]), sport),
                        dst=(socket.inet_ntoa(ips[4:]), dport),
                        ssrc=ssrc,
                        direction="in" if dport in self.ports else "out",
                        times=np.array(r.times, np.float64),
                        seq=_unwrap(np.array(r.seq), 16),
                        ts=_unwrap(np.array(r.ts), 32),
                        pt=pt & 0x7F,
                        marker=(pt & 0x80) != 0,
                        levels_db=np.array(r.levels, np.float32),
                    )
                )
        out.sort(key=lambda st: st.times[0])
        return out


def _parse_ports(text: str) -> range:
    lo, _, hi = text.partition("-")
    return range(int(lo), int(hi or lo) + 1)


def main() -> None:
    ap = argparse.ArgumentParser(description="Meter RTP on lo for a while and print each stream.")
    ap.add_argument(
        "--ports", type=_parse_ports, required=True, help="LO-HI, the caller's RTP ports"
    )
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--threshold-db", type=float, default=-40.0)
    a = ap.parse_args()
    meter = RtpMeter(ports=a.ports)
    t0 = time.time()
    with meter:
        time.sleep(a.seconds)
    print(f"filter passed {meter.seen} packets, kernel drops {meter.drops}")
    for s in meter.streams():
        print(s.summary())
        segs = s.sound_segments(a.threshold_db)
        print("   sound (s after start):", [(round(b - t0, 2), round(e - t0, 2)) for b, e in segs])


if __name__ == "__main__":
    main()
