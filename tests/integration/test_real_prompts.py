"""The recognisers on real recorded 8 kHz telephone prompts: Moonshine base
(the default) and Whisper tiny.en.

The managed Asterisk root carries Asterisk's core English prompts (a real
voice, recorded for the phone network) and their transcripts.
"""

from __future__ import annotations

import gzip
import re

import pytest

from tests.textcheck import wer
from voiceos_switch.pbx.asterisk import AsteriskSandbox
from voiceos_switch.pbx.labcall import read_wav_mono16
from voiceos_switch.providers.moonshine import MoonshineSTT
from voiceos_switch.providers.stt import WhisperSTT
from voiceos_switch.providers.vad import VADStream

pytestmark = pytest.mark.integration

PROMPTS = [
    "agent-alreadyon",
    "all-circuits-busy-now",
    "call-fwd-no-ans",
    "cannot-complete-as-dialed",
    "check-number-dial-again",
    "conf-getpin",
    "invalid",
    "pbx-invalid",
    "vm-goodbye",
    "vm-intro",
    "vm-nomore",
    "vm-passchanged",
    "vm-theperson",
    "privacy-unident",
    "queue-thankyou",
    "vm-incorrect",
]


def transcripts(asterisk: AsteriskSandbox) -> dict[str, str]:
    path = asterisk.host_path("/usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz")
    out = {}
    for line in gzip.open(path, "rt", encoding="utf-8", errors="replace"):
        m = re.match(r"^([\w/-]+):\s*(.+)$", line.strip())
        if m:  # annotations such as "(simple tone sound plays)" are not speech
            out[m.group(1)] = re.sub(r"\([^)]*\)|\[[^\]]*\]|<[^>]*>", " ", m.group(2))
    return out


@pytest.mark.parametrize("recogniser", ["moonshine", "whisper"])
async def test_recognisers_on_real_recorded_phone_prompts(
    asterisk: AsteriskSandbox, recogniser: str
) -> None:
    texts = transcripts(asterisk)
    sounds = asterisk.host_path("/usr/share/asterisk/sounds/en_US_f_Allison")
    stt = MoonshineSTT() if recogniser == "moonshine" else WhisperSTT()
    errors = words = 0
    used = 0
    for name in PROMPTS:
        wav = sounds / f"{name}.wav"
        if name not in texts or not wav.exists():
            continue
        pcm, rate = read_wav_mono16(wav)
        assert rate == 8000
        result = await stt.transcribe(pcm, rate)
        e, n = wer(texts[name], result.text)
        errors, words, used = errors + e, words + n, used + 1
        # and the VAD hears every one of them
        vad = VADStream(8000)
        flags = [r.speech for i in range(0, len(pcm), 320) for r in vad.feed(pcm[i : i + 320])]
        assert sum(flags) * 32 > 300, f"VAD missed {name}"
    assert used >= 12
    rate_ = errors / words
    print(f"{recogniser} WER on {used} real prompts ({words} words): {rate_:.1%}")
    assert rate_ < 0.12
