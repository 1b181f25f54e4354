"""The dashboard's browser phone, as a person uses it.

Headless Chromium signs in to the dashboard of the demo shop's agent, and
"Call the agent" places a WebRTC call (SIP over WebSocket to the managed
Asterisk 22, DTLS-SRTP media, over loopback) with a fake microphone that
plays a recorded question. The agent's spoken answer comes back to the
page, which records it; the recording must transcribe to the answer, the
call's live transcript must show beside the phone, and the call must be in
the dashboard's list and the store afterwards. A wrong SIP password is
refused by the PBX and the page says so. Screenshot:
``out/screenshots/dashboard-phone.png``.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import wave
from pathlib import Path

import numpy as np
import pytest

from tests.audiocheck import heard_words
from tests.browser import chromium
from tests.integration.serving import serving
from voiceos_switch import Call
from voiceos_switch.audio.pcm import resample
from voiceos_switch.call import Turn
from voiceos_switch.demo import demo_agent
from voiceos_switch.pbx.asterisk import AsteriskSandbox
from voiceos_switch.providers.tts.piper import PiperTTS
from voiceos_switch.settings import Settings

pytestmark = pytest.mark.integration

TOKEN = "phone-test-token-0123456789abc"
SHOTS = Path(__file__).resolve().parents[2] / "out" / "screenshots"
QUESTION = "Hi. What are your opening hours on Saturday?"
TRANSCRIPT = "document.getElementById('transcript').innerText"
STATUS = "document.getElementById('phone-status').innerText"


async def microphone(path: Path) -> Path:
    """What the fake microphone plays: quiet while the agent greets, the
    question, then quiet (Chromium would loop the file)."""
    rate = 48000
    speech = resample(await PiperTTS(steady=True).synthesize(QUESTION, 16000), 16000, rate)
    quiet = lambda s: bytes(2 * int(rate * s))  # noqa: E731
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(quiet(5.0) + speech + quiet(60.0))
    return path


def flags(mic: Path) -> list[str]:
    return [
        "--use-fake-ui-for-media-stream",  # the microphone permission, granted
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={mic}%noloop",
        "--allow-loopback-in-peer-connection",  # media stays on 127.0.0.1
    ]


async def test_browser_phone_talks_to_the_agent(asterisk: AsteriskSandbox, tmp_path: Path) -> None:
    settings = Settings(
        dashboard="127.0.0.1:0",
        dashboard_token=TOKEN,
        webphone_password=asterisk.webphone_password(),
        recordings_dir=tmp_path / "recordings",
        database_url=f"sqlite:///{tmp_path / 'calls.db'}",
    )
    agent = demo_agent(settings, voice="espeak")
    answered = asyncio.Event()

    @agent.on("transcript")
    def line(call: Call, turn: Turn) -> None:
        # the agent's second line (after the greeting), finished
        if turn.role == "agent" and sum(t.role == "agent" for t in call.transcript) >= 2:
            answered.set()

    mic = await microphone(tmp_path / "mic.wav")
    async with serving(agent), chromium(extra_args=flags(mic)) as page:
        base = f"http://127.0.0.1:{agent.dashboard.port}"
        await page.goto(base + "/login")
        await page.evaluate(
            f"document.getElementById('token').value = {json.dumps(TOKEN)};"
            "document.getElementById('login').submit()"
        )
        assert await page.wait_for("location.pathname === '/' && !!window.voiceosPhone")
        await page.wait_for("document.getElementById('source').innerText === 'live'")

        await page.evaluate("document.getElementById('phone-call').click()")
        await page.wait_for("voiceosPhone.state === 'in-call'", 60, show=STATUS)
        tag = await page.evaluate("voiceosPhone.tag")
        # the phone's call is the one the page shows, live, as it is spoken
        await page.wait_for(
            "[...document.querySelectorAll('#transcript .line.caller')]"
            ".some(l => /saturday|hours/i.test(l.innerText))",
            120,
            show=TRANSCRIPT,
        )
        await page.wait_for(
            "[...document.querySelectorAll('#transcript .line.agent')]"
            ".some(l => /open/i.test(l.innerText))",
            120,
            show=TRANSCRIPT,
        )
        SHOTS.mkdir(parents=True, exist_ok=True)
        await page.screenshot(SHOTS / "dashboard-phone.png")
        # once the agent's answer has been spoken, hang up from the page
        await asyncio.wait_for(answered.wait(), 120)
        live = agent.live_calls()
        assert len(live) == 1
        call_id = live[0]["id"]
        await page.evaluate("document.getElementById('phone-call').click()")
        await page.wait_for(
            "voiceosPhone.state === 'ended' && !!voiceosPhone.recording", 30, show=STATUS
        )

        # what the page recorded is the agent's answer
        b64 = await page.evaluate(
            "voiceosPhone.recording.arrayBuffer().then(b => { let s = '';"
            " new Uint8Array(b).forEach(x => s += String.fromCharCode(x)); return btoa(s); })"
        )
        with wave.open(io.BytesIO(base64.b64decode(b64))) as w:
            rate = w.getframerate()
            pcm = w.readframes(w.getnframes())
        assert len(pcm) / 2 / rate > 3, "the page recorded less than 3 s"
        assert np.abs(np.frombuffer(pcm, "<i2")).max() > 1000, "the page heard only silence"
        words = await heard_words(resample(pcm, rate, 16000), 16000)
        assert {"open", "six", "evening", "saturday"} <= set(words), " ".join(words)

        # the call is on the dashboard and in the store, as the phone's caller
        await page.wait_for(
            f"document.querySelector('#calls tbody').innerText.includes('web-{tag}')",
            60,
            show="document.querySelector('#calls tbody').innerText",
        )
        record = agent.store.get_call(call_id)
        assert record is not None and record["caller"] == f"web-{tag}"
        assert any("open" in t["text"].lower() for t in record["turns"] if t["role"] == "agent")

        # a wrong SIP password: the PBX refuses, and the page says so
        await page.evaluate(
            "(() => { const real = window.fetch; window.fetch = (url, opts) =>"
            " real(url, opts).then(async (r) => { if (!String(url).endsWith('/api/phone')) return r;"
            " const c = await r.json(); c.password = 'not-the-password';"
            " return new Response(JSON.stringify(c), { headers: { 'content-type': 'application/json' } }); }); })()"
        )
        await page.evaluate("document.getElementById('phone-call').click()")
        await page.wait_for("voiceosPhone.state === 'failed'", 60, show=STATUS)
        status = await page.evaluate(STATUS)
        assert "refused" in status and ("401" in status or "403" in status), status
        assert agent.live_calls() == []
