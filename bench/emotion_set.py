"""The emotion evaluation set, built from nothing but the voices and prompts
installed here, and the fit of the shipped fusion weights on it.

What it is:

- scripted callers: 16 of them, each a voice (espeak-ng voices and piper,
  with their own base pitch, pace and loudness, three of them loud
  throughout), each speaking two neutral opening turns (their baseline)
  and then turns of each state: frustrated, confused, urgent, satisfied,
  and neutral (with hard negatives: "it's not urgent", "could you check it
  again"). A state's turns are voiced the way the state usually sounds:
  frustration louder, higher and wider in pitch; urgency faster and louder;
  confusion slower, often rising at the end; satisfaction a little higher.
  Some turns carry a state in the words only, some in the voice only.
  Every turn goes through a telephone channel (300-3400 Hz, G.711) with
  line noise, as one recording per caller, through the live call's
  listener and recogniser (``conversation/recorded.py``).
- real recorded neutral telephone speech: Asterisk's core English prompts
  (one professional speaker, 8 kHz), in "calls" of 12 prompts, for the
  false alarms on a real voice.

What it cannot show: no recording of real emotional speech ships in any
package here. The synthetic states are what the script put into the
voices, so recall on them says the reader hears those changes, not that it
hears a real angry caller; the real prompts show how often a real, calm
voice sets off a false alarm.

Callers 0, 2, 4, ... and every other sentence of each state are the
training part; the rest is held out, and every figure reported is on the
held-out part (and on the real prompts not used to set the thresholds).

    .venv/bin/python bench/emotion_set.py --build emotion-set.json   # ~5 min
    .venv/bin/python bench/emotion_set.py --from emotion-set.json --fit \\
        voiceos_switch/providers/emotion/weights.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from stats import logistic  # bench/stats.py (scripts run from bench/)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

RATE = 8000
GAP_S = 1.6
#: the real prompts read (in name order), 12 to a call
REAL_PROMPTS = 480

SENTENCES: dict[str, list[str]] = {
    "frustrated": [
        "This is the third time I've called about this order.",
        "I've been waiting for over an hour and nobody has helped me.",
        "Why does this keep happening? It's ridiculous.",
        "I already gave you my account number twice.",
        "Your system is useless, it never works.",
        "I'm really fed up with this whole thing.",
        "You keep asking me the same question again and again.",
        "This is completely unacceptable.",
        "I have been trying to fix this for weeks.",
        "Nobody ever calls me back, it's a joke.",
        "Seriously, how hard can it be to send a package?",
        "I'm sick of being put on hold.",
    ],
    "confused": [
        "Sorry, what do you mean by that?",
        "I don't understand, which button should I press?",
        "Wait, what? Can you explain that again?",
        "I'm not sure what you're asking me.",
        "Huh? I thought the order was already sent?",
        "That doesn't make any sense to me.",
        "Which account are you talking about?",
        "So do I need to pay now or later?",
        "I'm a bit lost, what was the first step?",
        "What does pending mean exactly?",
        "Could you say that one more time, slowly?",
        "Um, I'm not following, is that the same thing?",
    ],
    "urgent": [
        "I need this fixed right now, please.",
        "It's an emergency, my water pipe just burst.",
        "Please hurry, the delivery has to arrive today.",
        "Can you send a technician as soon as possible?",
        "My flight leaves in two hours, I need the ticket now.",
        "This is urgent, the system is down for all our customers.",
        "I can't wait until Monday, it has to be done tonight.",
        "Quickly please, I'm running out of time.",
        "The power is out and I need help right away.",
        "We have no time, the shop opens in ten minutes.",
        "Please, it's really urgent, my card was stolen.",
        "I need an answer immediately.",
    ],
    "satisfied": [
        "Perfect, thank you so much.",
        "That's great, you've been really helpful.",
        "Wonderful, that's exactly what I needed.",
        "Thanks, that sorts it out.",
        "Brilliant, I appreciate your help.",
        "Oh that's lovely, thank you.",
        "Excellent, that works for me.",
        "Great, I'm happy with that.",
        "Awesome, thanks for checking.",
        "That helps a lot, thank you.",
        "Fantastic, have a nice day.",
        "Okay good, that's all I needed, cheers.",
    ],
    "neutral": [
        "I'd like to check the status of my order.",
        "My account number is four five six seven.",
        "Can you tell me your opening hours on Sunday?",
        "I want to change my delivery address.",
        "It's not urgent, I just have a question.",
        "Could you check it again for me?",
        "The order was placed last Tuesday.",
        "Do you have the blue one in a larger size?",
        "I'm calling about my electricity bill.",
        "No problem, I'm not in a hurry.",
        "How much does the express shipping cost?",
        "I'm not upset, I just want to know the price.",
        "I would like to book an appointment for next week.",
        "It's the second floor, apartment twelve.",
        "What colours does the jacket come in?",
        "Is the store on Main Street open late on Fridays?",
        "I'd like to pay my invoice by card.",
        "Can I change the time of my delivery?",
        "My email address is john at example dot com.",
        "Which size would you recommend for a child?",
        "I'm looking for a replacement battery.",
        "Could you send me the receipt again?",
        "We moved house last month, so the address is new.",
        "Do you deliver on weekends?",
    ],
}
#: the neutral turns each caller opens with (their baseline)
OPENING = ["Hi, I'm calling about an order I placed.", "It was a parcel for my sister."]
STATES = ("frustrated", "confused", "urgent", "satisfied")
#: the fit's regularisation (strong: the set is small), the lowest threshold,
#: and what a threshold may cost on the training part's neutral speech
L2 = 8.0
MIN_THRESHOLD = 0.4
MAX_FALSE_ALARMS = 0.02


@dataclass(frozen=True)
class Voice:
    """A scripted caller's own voice: engine, base pitch (espeak 0-100, or
    a pitch factor for piper), pace and loudness (dB)."""

    engine: str
    name: str
    pitch: float
    pace: float
    gain_db: float


CALLERS = [
    Voice("espeak", "en-us", 50, 1.0, 0),
    Voice("espeak", "en-us+f2", 55, 0.95, -4),
    Voice("piper", "joe", 1.0, 1.0, 0),
    Voice("espeak", "en-us+m3", 40, 1.05, 2),
    Voice("espeak", "en-us+f4", 62, 1.0, 10),  # loud throughout
    Voice("piper", "joe", 1.12, 0.95, -3),
    Voice("espeak", "en", 45, 0.9, -2),
    Voice("espeak", "en-us+m7", 35, 1.1, 9),  # loud throughout
    Voice("espeak", "en-us+f1", 58, 1.05, 3),
    Voice("piper", "joe", 0.9, 1.05, 8),  # loud throughout
    Voice("espeak", "en-GB-x-rp+f3", 60, 0.95, 0),
    Voice("espeak", "en-us+m1", 48, 1.0, -5),
    Voice("piper", "joe", 1.05, 1.1, 2),
    Voice("espeak", "en-us+f5", 66, 0.9, 1),
    Voice("espeak", "en-GB-scotland+m3", 42, 1.0, 4),
    Voice("piper", "joe", 0.95, 0.9, -1),
]

#: how each state is voiced: pitch change (espeak points / piper factor),
#: pitch range change (espeak points), pace factor, gain (dB); and the
#: share of a state's turns voiced plainly (the words alone carry it)
STYLE: dict[str, tuple[float, float, float, float]] = {
    "frustrated": (16, 30, 1.12, 7),
    "urgent": (9, 15, 1.3, 4),
    "confused": (0, 10, 0.85, 0),
    "satisfied": (6, 15, 1.0, 1),
    "neutral": (0, 0, 1.0, 0),
}
PLAIN_SHARE = 0.25


@dataclass
class Segment:
    label: str
    text: str
    start_s: float
    end_s: float
    voiced: bool  # carries the state's voice (not words alone)
    opening: bool = False


async def _speak(voice: Voice, text: str, state: str, voiced: bool) -> bytes:
    from voiceos_switch.providers.tts.espeak import EspeakTTS
    from voiceos_switch.providers.tts.piper import PiperTTS

    dp, dr, dpace, dgain = STYLE[state] if voiced else (0, 0, 1.0, 0)
    pace = voice.pace * dpace
    if voice.engine == "espeak":
        tts = EspeakTTS(
            voice.name, int(175 * pace), int(min(99, voice.pitch + dp)), int(min(99, 50 + dr))
        )
        pcm = await tts.synthesize(text, RATE)
    else:
        factor = voice.pitch * 2 ** (dp / 4 / 12)  # about a semitone per 4 espeak points
        # rendered at 8000 / factor and played at 8000: pitch (and pace) up by factor
        piper = PiperTTS(steady=True, length_scale=factor / pace)
        pcm = await piper.synthesize(text, int(RATE / factor))
    x = np.frombuffer(pcm, dtype="<i2").astype(np.float64) * 10 ** ((voice.gain_db + dgain) / 20)
    return np.clip(x, -32768, 32767).astype("<i2").tobytes()


def _line(pcm: bytes, seed: int) -> bytes:
    from tests.phone import phone_channel

    rng = np.random.default_rng(seed)
    x = np.frombuffer(phone_channel(pcm), dtype="<i2").astype(np.float64)
    x += rng.normal(0, 12, len(x))  # about -68 dBFS of line noise
    return np.clip(x, -32768, 32767).astype("<i2").tobytes()


async def caller_recording(index: int, voice: Voice) -> tuple[bytes, list[Segment]]:
    rng = random.Random(index)
    train = index % 2 == 0
    plan: list[tuple[str, str, bool, bool]] = [("neutral", t, False, True) for t in OPENING]
    turns = []
    for state, sentences in SENTENCES.items():
        for i, text in enumerate(sentences[0 if train else 1 :: 2]):
            voiced = state != "neutral" and (i + index) % round(1 / PLAIN_SHARE) != 0
            turns.append((state, text, voiced, False))
    rng.shuffle(turns)
    plan += turns
    audio = bytearray(bytes(int(0.8 * RATE) * 2))
    segments = []
    for state, text, voiced, opening in plan:
        pcm = await _speak(voice, text, state, voiced)
        start = len(audio) / 2 / RATE
        audio += pcm
        segments.append(Segment(state, text, start, len(audio) / 2 / RATE, voiced, opening))
        audio += bytes(int(GAP_S * RATE) * 2)
    return _line(bytes(audio), index), segments


def _match(segments: list[Any], start: float, end: float) -> Any | None:
    best, overlap = None, 0.0
    for s in segments:
        o = min(end, s.end_s) - max(start, s.start_s)
        if o > overlap:
            best, overlap = s, o
    return best


async def build(root: Path | None, stt_name: str) -> dict[str, Any]:
    from voiceos_switch.conversation.recorded import read_recording
    from voiceos_switch.providers import registry
    from voiceos_switch.settings import Settings

    stt = registry.make_stt(Settings(stt=stt_name))
    await stt.load()
    samples: list[dict[str, Any]] = []
    t0 = time.monotonic()
    for index, voice in enumerate(CALLERS):
        pcm, segments = await caller_recording(index, voice)
        utterances = await read_recording(pcm, RATE, stt)
        for u in utterances:
            seg = _match(segments, u.start_s, u.end_s)
            if seg is None:
                continue
            samples.append(
                {
                    "source": "scripted",
                    "caller": index,
                    "split": "train" if index % 2 == 0 else "test",
                    "label": seg.label,
                    "opening": seg.opening,
                    "voiced": seg.voiced,
                    "loud_caller": voice.gain_db >= 8,
                    "script": seg.text,
                    "heard": u.text,
                    "features": u.reading.features,
                    "confidence": u.reading.confidence,
                }
            )
        print(
            f"[emotion-set] caller {index + 1}/{len(CALLERS)} ({voice.engine} {voice.name}): "
            f"{len(utterances)} utterances of {len(segments)} turns, "
            f"{time.monotonic() - t0:.0f} s",
            file=sys.stderr,
        )
    samples += await real_neutral(root, stt)
    return {"stt": stt_name, "samples": samples}


async def real_neutral(root: Path | None, stt: Any) -> list[dict[str, Any]]:
    """Asterisk's recorded prompts, 12 to a call, each call read from its start."""
    import turn as turnbench  # bench/turn.py: the prompts and their transcripts

    from voiceos_switch.conversation.recorded import read_recording
    from voiceos_switch.pbx.asterisk import AsteriskSandbox
    from voiceos_switch.pbx.labcall import read_wav_mono16

    root = root or AsteriskSandbox().root
    sounds = root / turnbench.SOUNDS.lstrip("/")
    prompts = []
    for name in sorted(turnbench.transcripts(root)):
        wav = sounds / f"{name}.wav"
        if "/" not in name and wav.exists():
            pcm, rate = read_wav_mono16(wav)
            if rate == RATE and len(pcm) > RATE // 2:
                prompts.append(pcm)
    out: list[dict[str, Any]] = []
    per_call = 12
    for c in range(0, min(len(prompts), REAL_PROMPTS), per_call):
        group = prompts[c : c + per_call]
        audio = bytearray(bytes(int(0.5 * RATE) * 2))
        for pcm in group:
            audio += pcm + bytes(int(GAP_S * RATE) * 2)
        utterances = await read_recording(bytes(audio), RATE, stt)
        for u in utterances:
            out.append(
                {
                    "source": "real",
                    "caller": f"prompts-{c // per_call}",
                    "split": "train" if (c // per_call) % 2 == 0 else "test",
                    "label": "neutral",
                    "opening": u.turn <= 2,
                    "voiced": False,
                    "loud_caller": False,
                    "script": "",
                    "heard": u.text,
                    "features": u.reading.features,
                    "confidence": u.reading.confidence,
                }
            )
        calls = (min(len(prompts), REAL_PROMPTS) + per_call - 1) // per_call
        print(f"[emotion-set] real prompts: call {c // per_call + 1}/{calls}", file=sys.stderr)
    return out


# --------------------------------------------------------------------- fit
def _matrix(samples: list[dict[str, Any]], names: tuple[str, ...]) -> np.ndarray:
    return np.array([[s["features"].get(n, 0.0) for n in names] for s in samples])


def fit(data: dict[str, Any], out: Path | None) -> dict[str, Any]:
    from voiceos_switch.providers.emotion.fusion import FEATURES, Z_LIMIT, Weights

    samples = [s for s in data["samples"] if not s["opening"]]
    train = [s for s in samples if s["split"] == "train"]
    x = _matrix(train, FEATURES)
    mean, scale = x.mean(axis=0), x.std(axis=0)
    scale[scale < 1e-6] = 1.0
    z = np.c_[np.ones(len(x)), np.clip((x - mean) / scale, -Z_LIMIT, Z_LIMIT)]
    states: dict[str, Any] = {}
    for state in STATES:
        y = np.array([1.0 if s["label"] == state else 0.0 for s in train])
        w = logistic(z, y, l2=L2)
        states[state] = {"bias": float(w[0]), "weights": [float(v) for v in w[1:]]}
    weights = {
        "features": list(FEATURES),
        "mean": [float(v) for v in mean],
        "scale": [float(v) for v in scale],
        "states": states,
        "thresholds": {},
        "about": {
            "fitted_by": "bench/emotion_set.py --fit",
            "stt": data["stt"],
            "train_turns": len(train),
        },
    }
    model = Weights.from_dict({**weights, "thresholds": {s: 0.5 for s in STATES}})
    scored = [(s, model.scores(s["features"])) for s in samples]
    # each state's threshold: the best F1 on the training part among those
    # at which its neutral speech (real and scripted) raises at most 2 %
    # false alarms, and never under MIN_THRESHOLD
    for state in STATES:
        train_scored = [(s, p[state]) for s, p in scored if s["split"] == "train"]
        weights["thresholds"][state] = _threshold(train_scored, state)
    model = Weights.from_dict(weights)
    report = evaluate(samples, model)
    weights["about"]["held_out"] = report["summary"]
    report["voice_at_baseline"] = voice_at_baseline(samples, model)
    if out is not None:
        out.write_text(json.dumps(weights, indent=1) + "\n")
    return report


def _threshold(scored: list[tuple[dict[str, Any], float]], state: str) -> float:
    neutral = [p for s, p in scored if s["label"] != state and s["label"] == "neutral"]
    best_t, best_f1 = 0.9, -1.0
    for t in np.arange(MIN_THRESHOLD, 0.95, 0.025):
        fa = sum(p >= t for p in neutral) / max(1, len(neutral))
        if fa > MAX_FALSE_ALARMS:
            continue
        tp = sum(1 for s, p in scored if s["label"] == state and p >= t)
        fp = sum(1 for s, p in scored if s["label"] != state and p >= t)
        fn = sum(1 for s, p in scored if s["label"] == state and p < t)
        f1 = 2 * tp / max(1, 2 * tp + fp + fn)
        if f1 > best_f1:
            best_t, best_f1 = float(t), f1
    return round(best_t, 3)


def evaluate(samples: list[dict[str, Any]], model: Any) -> dict[str, Any]:
    """Per-state precision and recall on the held-out scripted turns, and
    the false alarms (any state over its threshold) on held-out neutral
    speech, real and scripted."""
    test = [s for s in samples if s["split"] == "test"]
    rows: dict[str, Any] = {}
    for state in STATES:
        t = model.thresholds[state]
        scripted = [s for s in test if s["source"] == "scripted"]
        hit = [s for s in scripted if model.scores(s["features"])[state] >= t]
        tp = sum(1 for s in hit if s["label"] == state)
        positives = [s for s in scripted if s["label"] == state]
        voiced = [s for s in positives if s["voiced"]]
        plain = [s for s in positives if not s["voiced"]]
        rows[state] = {
            "threshold": t,
            "precision": round(tp / len(hit), 3) if hit else None,
            "recall": round(tp / len(positives), 3) if positives else None,
            "recall_voiced": _recall(voiced, model, state),
            "recall_words_only": _recall(plain, model, state),
            "n": len(positives),
        }

    def alarms(group: list[dict[str, Any]]) -> dict[str, Any]:
        fired = [
            s
            for s in group
            if any(model.scores(s["features"])[st] >= model.thresholds[st] for st in STATES)
        ]
        return {
            "n": len(group),
            "false_alarms": len(fired),
            "rate": round(len(fired) / len(group), 3) if group else None,
            "examples": [s["heard"] for s in fired[:5]],
        }

    real = [s for s in test if s["source"] == "real"]
    neutral = [s for s in test if s["source"] == "scripted" and s["label"] == "neutral"]
    loud = [s for s in neutral if s["loud_caller"]]
    summary = {
        "states": rows,
        "false_alarms_real_neutral": alarms(real),
        "false_alarms_scripted_neutral": alarms(neutral),
        "false_alarms_loud_callers_neutral": alarms(loud),
    }
    return {"summary": summary}


def voice_at_baseline(samples: list[dict[str, Any]], model: Any) -> dict[str, Any]:
    """The same model with every voice feature at the caller's baseline
    (the words alone, as the after-call analysis reads a turn): what the
    voice adds."""
    from voiceos_switch.providers.emotion.fusion import PROSODY_FEATURES, derived

    flat = []
    for s in samples:
        features = derived({**s["features"], **dict.fromkeys(PROSODY_FEATURES, 0.0)})
        flat.append({**s, "features": features})
    summary = evaluate(flat, model)["summary"]
    return {
        "states": {
            k: {m: v[m] for m in ("precision", "recall")} for k, v in summary["states"].items()
        },
        "false_alarms_real_neutral": summary["false_alarms_real_neutral"]["rate"],
        "false_alarms_scripted_neutral": summary["false_alarms_scripted_neutral"]["rate"],
    }


def _recall(group: list[dict[str, Any]], model: Any, state: str) -> float | None:
    if not group:
        return None
    t = model.thresholds[state]
    return round(sum(model.scores(s["features"])[state] >= t for s in group) / len(group), 3)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--build", type=Path, help="build the set and save its features here")
    ap.add_argument("--from", dest="source", type=Path, help="a set saved by --build")
    ap.add_argument("--fit", type=Path, help="fit the weights and write them here")
    ap.add_argument("--stt", default="moonshine")
    ap.add_argument("--root", type=Path, default=None, help="the Asterisk root with the prompts")
    args = ap.parse_args()
    if args.build:
        data = asyncio.run(build(args.root, args.stt))
        args.build.write_text(json.dumps(data))
    elif args.source:
        data = json.loads(args.source.read_text())
    else:
        ap.error("--build PATH or --from PATH")
    if args.fit or args.source:
        if args.fit:
            report = fit(data, args.fit)
        else:
            from voiceos_switch.providers.emotion.fusion import Weights

            samples = [s for s in data["samples"] if not s["opening"]]
            report = evaluate(samples, Weights.load())
        print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
