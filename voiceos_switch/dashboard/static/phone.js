// The browser phone: "Call the agent" places a WebRTC call through the PBX
// (SIP over WebSocket to Asterisk's res_pjsip WebSocket transport, media
// over DTLS-SRTP) with the microphone, plays the agent, and records what it
// hears so it can be played back or saved. The call then appears on the
// dashboard like any other: the page selects it, so its live transcript
// shows beside the phone. SIP.js is loaded as its own ES modules.
"use strict";

const phone = {
  tag: null,        // this call's tag: the PBX shows the caller as web-<tag>
  state: "idle",
  session: null,
  recorder: null,
  recording: null,  // Blob (WAV) of what the page heard on the last call
  heardSeconds: 0,
  owns(caller) { return Boolean(this.tag) && caller === `web-${this.tag}`; },
};
window.voiceosPhone = phone;

function $(id) { return document.getElementById(id); }

function show(state, text) {
  phone.state = state;
  const status = $("phone-status");
  status.textContent = text;
  status.dataset.state = state;
  const button = $("phone-call");
  button.textContent = state === "idle" || state === "ended" || state === "failed" ? "Call the agent" : "Hang up";
  button.disabled = state === "hanging-up";
}

// --- recording what the page hears, as 16-bit WAV -------------------------------

function startRecorder(stream) {
  const ctx = new AudioContext();
  const source = ctx.createMediaStreamSource(stream);
  const tap = ctx.createScriptProcessor(4096, 1, 1);
  const chunks = [];
  tap.onaudioprocess = (e) => { chunks.push(new Float32Array(e.inputBuffer.getChannelData(0))); };
  const mute = ctx.createGain();
  mute.gain.value = 0;  // the <audio> element is what the person hears
  source.connect(tap);
  tap.connect(mute);
  mute.connect(ctx.destination);
  return {
    stop() {
      tap.onaudioprocess = null;
      source.disconnect();
      const rate = ctx.sampleRate;
      ctx.close();
      return wav(chunks, rate);
    },
  };
}

function wav(chunks, rate) {
  const n = chunks.reduce((sum, c) => sum + c.length, 0);
  const view = new DataView(new ArrayBuffer(44 + n * 2));
  const text = (at, s) => { for (let i = 0; i < s.length; i++) view.setUint8(at + i, s.charCodeAt(i)); };
  text(0, "RIFF"); view.setUint32(4, 36 + n * 2, true); text(8, "WAVE");
  text(12, "fmt "); view.setUint32(16, 16, true); view.setUint16(20, 1, true); view.setUint16(22, 1, true);
  view.setUint32(24, rate, true); view.setUint32(28, rate * 2, true); view.setUint16(32, 2, true); view.setUint16(34, 16, true);
  text(36, "data"); view.setUint32(40, n * 2, true);
  let at = 44;
  for (const c of chunks) {
    for (let i = 0; i < c.length; i++, at += 2) view.setInt16(at, Math.max(-1, Math.min(1, c[i])) * 0x7fff, true);
  }
  return { blob: new Blob([view], { type: "audio/wav" }), seconds: n / rate };
}

// --- the call ------------------------------------------------------------------

async function call() {
  const config = await fetch("/api/phone", { credentials: "same-origin", cache: "no-store" }).then((r) => r.json());
  if (!config.enabled) { show("failed", config.reason); return; }
  let SIP;
  try {
    SIP = await import("/vendor/sip.js/index.js");
  } catch (err) {
    show("failed", `cannot load SIP.js: ${err.message}`);
    return;
  }
  phone.tag = Array.from(crypto.getRandomValues(new Uint8Array(4)), (b) => b.toString(16).padStart(2, "0")).join("");
  phone.recording = null;
  $("phone-heard").replaceChildren();
  show("connecting", `connecting to ${config.ws}…`);
  const ua = new SIP.UserAgent({
    uri: SIP.UserAgent.makeURI(`sip:${config.user}@${config.domain}`),
    transportOptions: { server: config.ws, connectionTimeout: 10 },
    authorizationUsername: config.user,
    authorizationPassword: config.password,
    displayName: "Browser phone",
    logLevel: "warn",
    sessionDescriptionHandlerFactoryOptions: { iceGatheringTimeout: 2000, peerConnectionConfiguration: { iceServers: [] } },
  });
  try {
    await ua.start();
  } catch (err) {
    show("failed", `cannot reach the PBX at ${config.ws}: ${err.message}`);
    return;
  }
  const target = SIP.UserAgent.makeURI(`sip:${config.number}@${config.domain}`);
  const session = new SIP.Inviter(ua, target, {
    extraHeaders: [`X-Voiceos-Tag: ${phone.tag}`],
    sessionDescriptionHandlerOptions: { constraints: { audio: true, video: false } },
  });
  phone.session = session;
  let rejected = null;
  session.stateChange.addListener((state) => {
    if (state === SIP.SessionState.Established) {
      const pc = session.sessionDescriptionHandler.peerConnection;
      const stream = new MediaStream(pc.getReceivers().map((r) => r.track).filter(Boolean));
      const audio = $("phone-audio");
      audio.srcObject = stream;
      audio.play().catch(() => {});
      phone.recorder = startRecorder(stream);
      show("in-call", `in a call with the agent (you are web-${phone.tag})`);
    } else if (state === SIP.SessionState.Terminated) {
      if (phone.recorder) {
        const { blob, seconds } = phone.recorder.stop();
        phone.recorder = null;
        phone.recording = blob;
        phone.heardSeconds = seconds;
        const url = URL.createObjectURL(blob);
        $("phone-heard").replaceChildren(
          document.createTextNode(`What you heard (${seconds.toFixed(1)} s): `),
          Object.assign(document.createElement("audio"), { controls: true, src: url }),
          Object.assign(document.createElement("a"), { href: url, download: `call-web-${phone.tag}.wav`, textContent: "save" }),
        );
        show("ended", "call ended");
      } else {
        show("failed", rejected || "the call ended before it was answered");
      }
      $("phone-audio").srcObject = null;
      phone.session = null;
      ua.stop();
    }
  });
  show("calling", `calling ${config.number}…`);
  try {
    await session.invite({
      requestDelegate: {
        onReject(response) {
          const m = response.message;
          rejected = `the PBX refused the call: ${m.statusCode} ${m.reasonPhrase}` +
            (m.statusCode === 401 || m.statusCode === 403 ? " (wrong SIP password?)" : "");
          // SIP.js ends the session before it hands over the response
          if (phone.state === "failed") show("failed", rejected);
        },
      },
    });
  } catch (err) {
    show("failed", `cannot place the call: ${err.message}`);
  }
}

function hangUp() {
  const session = phone.session;
  if (!session) return;
  show("hanging-up", "hanging up…");
  if (session.state === "Established") session.bye();
  else session.cancel();
}

document.addEventListener("DOMContentLoaded", () => {
  $("phone-call").addEventListener("click", () => {
    if (phone.session) hangUp(); else call();
  });
});
