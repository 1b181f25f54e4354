// The dashboard's front end: plain JavaScript, no build step. Everything the
// page shows comes from the JSON API and the live event stream (server-sent
// events, resumed from the last id after a reconnect). Text from calls is
// only ever set as text, never parsed as HTML.
"use strict";

const STATES = ["frustrated", "confused", "urgent", "satisfied"];
const STAGES = ["endpoint", "confirmed", "stt_final", "llm_first_token", "tts_first_audio", "first_frame_sent"];
const HUE = { frustrated: 0, confused: 45, urgent: 280, satisfied: 130 };
const live = new Map();
let selected = null;
let pending = false;

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "style") node.style.cssText = v;  // CSSOM: allowed by the page's CSP
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

function fill(id, ...children) {
  const node = document.getElementById(id);
  node.replaceChildren(...children.flat(Infinity).filter((c) => c !== null && c !== undefined));
  return node;
}

async function api(path) {
  const response = await fetch(path, { credentials: "same-origin", cache: "no-store" });
  if (response.status === 401) { location.href = "/login"; throw new Error("signed out"); }
  if (!response.ok) throw new Error(`${path}: ${response.status}`);
  return response.json();
}

const clock = (t) => (t ? new Date(t * 1000).toLocaleTimeString() : "");
const secs = (s) => (s === null || s === undefined ? "" : s < 60 ? `${s.toFixed(1)} s` : `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`);
const ms = (v) => (v === null || v === undefined ? "–" : `${Math.round(v)} ms`);
const money = (v) => (v === null || v === undefined ? "–" : `$${Number(v).toFixed(4)}`);

// --- live events -----------------------------------------------------------------

function callOf(id, seed) {
  let c = live.get(id);
  if (!c) {
    c = { id, pbx: "", caller: "", called: "", variant: null, started_at: Date.now() / 1000,
          lines: [], partial: "", latency: [], emotions: [], readings: [], ended: false, reason: "" };
    live.set(id, c);
  }
  if (seed) Object.assign(c, seed);
  return c;
}

function mark(c, kind, text) { c.lines.push({ role: "mark", kind, text }); }

function handle(e) {
  const c = e.call_id ? callOf(e.call_id) : null;
  switch (e.kind) {
    case "call_started":
      Object.assign(c, { pbx: e.pbx, caller: e.caller, called: e.called, variant: e.variant, started_at: e.at, ended: false });
      // the browser phone's own call is the one to watch
      if (!selected || (window.voiceosPhone && window.voiceosPhone.owns(e.caller))) selected = c.id;
      break;
    case "partial_transcript": c.partial = e.text; break;
    case "transcript":
      c.lines.push({ role: e.role, text: e.text, interrupted: e.interrupted, planned: e.planned_text });
      if (e.role === "caller") c.partial = "";
      break;
    case "barge_in_paused": mark(c, "barge-in", `caller spoke over the ${e.speaking}`); break;
    case "barge_in_resolved": mark(c, "barge-in", `barge-in: ${e.outcome}`); break;
    case "tool_called": mark(c, "tool", `${e.name}(${e.arguments}) → ${e.result}`); break;
    case "emotion_detected":
      c.emotions.push(e.emotion);
      mark(c, "emotion", `${e.emotion.type} ${Math.round(e.emotion.intensity * 100)} %`);
      break;
    case "emotion_read": c.readings.push({ t: e.t, turn: e.turn, scores: e.scores, announced: e.announced }); break;
    case "escalation_requested": mark(c, "transfer", `asked for a person (${e.source})`); break;
    case "transferred": mark(c, "transfer", `handed to ${e.target}`); break;
    case "dtmf": mark(c, "dtmf", `key ${e.digit}`); break;
    case "provider_fallback": mark(c, "fallback", `${e.stage}: ${e.provider} ${e.error}; ${e.next} took over`); break;
    case "turn_latency": c.latency.push({ turn: e.index, ...e.marks_ms, interrupted: e.interrupted }); break;
    case "call_ended":
      Object.assign(c, { ended: true, reason: e.reason, duration_s: e.duration_s });
      refreshSoon();
      break;
    case "analysis": case "analyses_complete": refreshSoon(); break;
    default: break;
  }
  render();
}

function connect() {
  const source = new EventSource("/api/events");
  source.onopen = () => fill("source", "live");
  source.addEventListener("status", (m) => {
    const s = JSON.parse(m.data);
    const label = fill("source", s.problem ? `live view interrupted: ${s.problem}` : "live");
    label.className = s.problem ? "error" : "muted";
  });
  source.onmessage = (m) => { try { handle(JSON.parse(m.data)); } catch (err) { console.error(err); } };
  source.onerror = () => fill("source", "reconnecting…");
}

// --- rendering -------------------------------------------------------------------

function render() {
  if (pending) return;
  pending = true;
  requestAnimationFrame(() => { pending = false; renderLive(); renderSelected(); });
}

function renderLive() {
  const now = Date.now() / 1000;
  const calls = [...live.values()].filter((c) => !c.ended);
  fill("live-count", String(calls.length));
  fill("live", calls.length ? calls.map((c) => {
    const last = [...c.lines].reverse().find((l) => l.role !== "mark");
    const feel = c.emotions.length ? c.emotions[c.emotions.length - 1] : null;
    return el("button", { class: `card${c.id === selected ? " on" : ""}`, "data-call-id": c.id,
                          onclick: () => { selected = c.id; render(); } },
      el("strong", {}, c.caller || "unknown caller"), " ",
      el("span", { class: "muted" }, `${c.pbx}${c.variant ? " · " + c.variant : ""} · ${secs(now - c.started_at)}`),
      feel ? el("span", { class: "badge", style: `background:hsl(${HUE[feel.type]} 70% 85%)` }, feel.type) : null,
      el("div", { class: "preview" }, c.partial ? `… ${c.partial}` : last ? `${last.role}: ${last.text}` : "…"));
  }) : el("p", { class: "muted empty" }, "No call in progress."));
}

function transcriptItems(lines, partial) {
  const items = lines.map((l) => l.role === "mark"
    ? el("li", { class: `mark ${l.kind}` }, l.text)
    : el("li", { class: `line ${l.role}${l.interrupted ? " cut" : ""}` },
        el("b", {}, l.role === "caller" ? "Caller" : "Agent"), " ", l.text || "…",
        l.interrupted ? el("span", { class: "muted" }, l.planned ? ` (cut; meant: ${l.planned})` : " (cut)") : null));
  if (partial) items.push(el("li", { class: "line caller partial" }, el("b", {}, "Caller"), " ", partial, " …"));
  return items;
}

function latencyBars(turns) {
  const rows = turns.filter((t) => t.first_frame_sent !== null && t.first_frame_sent !== undefined);
  if (!rows.length) return el("p", { class: "muted" }, "No answered turn yet.");
  const widest = Math.max(...rows.map((t) => t.first_frame_sent), 1);
  return el("div", { class: "latency" }, rows.map((t) => {
    let from = 0;
    const parts = STAGES.filter((s) => t[s] !== null && t[s] !== undefined).map((s) => {
      const to = Math.max(from, t[s]);
      const part = el("span", { class: `stage ${s}`, title: `${s} ${ms(t[s])}`,
                                style: `width:${(100 * (to - from)) / widest}%` });
      from = to;
      return part;
    });
    return el("div", { class: "turn", "data-turn": t.turn },
      el("span", { class: "label" }, `turn ${t.turn}`), el("span", { class: "bar" }, parts),
      el("span", { class: "total" }, ms(t.first_frame_sent)));
  }), el("div", { class: "legend" }, STAGES.map((s) => el("span", {}, el("i", { class: `stage ${s}` }), s))));
}

function renderSelected() {
  const c = selected ? live.get(selected) : null;
  document.getElementById("selected").hidden = !c;
  if (!c) return;
  fill("sel-id", c.id);
  fill("sel-state", c.ended ? `ended (${c.reason})` : "live");
  fill("transcript", transcriptItems(c.lines, c.partial));
  fill("sel-heat",
    c.readings.length
      ? heatTable(STATES, c.readings.map((r) => `${r.t}s`), STATES.map((s) => c.readings.map((r) => r.scores[s] ?? null)))
      : el("p", { class: "muted" }, "No utterance read yet."),
    c.emotions.map((e) => el("span", { class: "badge", style: `background:hsl(${HUE[e.type]} 70% ${95 - 30 * e.intensity}%)` },
      `${e.type} ${Math.round(e.intensity * 100)} % · turn ${e.turn}`)));
  fill("sel-latency", latencyBars(c.latency));
}

function heatTable(states, columns, cells) {
  return el("table", { class: "heat" },
    el("tr", {}, el("th", {}, ""), columns.map((h) => el("th", {}, h))),
    states.map((s, i) => el("tr", {}, el("th", {}, s), cells[i].map((v) => el("td", {
      title: v === null ? "no reading" : v.toFixed(2),
      style: v === null ? "" : `background:hsl(${HUE[s]} 70% ${97 - 45 * v}%)` }, v === null ? "" : v.toFixed(2))))));
}

async function refreshHome() {
  const [calls, overview, variants] = await Promise.all([api("/api/calls"), api("/api/overview"), api("/api/variants")]);
  for (const c of calls.live || []) {
    const seen = live.get(c.id);
    if (!seen) callOf(c.id, { pbx: c.pbx, caller: c.caller, called: c.called, variant: c.variant, started_at: c.started_at,
                              lines: c.turns.map((t) => ({ role: t.role, text: t.text })) });
    else seen.variant = c.variant;
  }
  const body = document.querySelector("#calls tbody");
  body.replaceChildren(...calls.calls.map((r) => el("tr", { "data-call-id": r.id, onclick: () => { location.hash = `#/call/${r.id}`; } },
    el("td", {}, clock(r.started_at)), el("td", {}, r.caller || "–"), el("td", {}, r.pbx), el("td", {}, r.variant || "–"),
    el("td", {}, secs(r.duration_s)), el("td", {}, r.turns), el("td", {}, ms(r.latency_ms)),
    el("td", {}, r.disposition || (r.analysed ? "–" : "analysing…")), el("td", {}, r.sentiment || "–"),
    el("td", {}, money(r.cost_per_minute)), el("td", {}, r.transferred ? "handed over " : "", r.flags ? `${r.flags} flag(s)` : ""))));
  if (!calls.calls.length) body.append(el("tr", {}, el("td", { colspan: 11, class: "muted" }, "No call stored yet.")));

  const lat = overview.latency;
  fill("latency-summary", lat.turns ? `${lat.turns} turns · p50 ${ms(lat.p50_ms)} · p90 ${ms(lat.p90_ms)}` : "No answered turn yet.");
  const peak = Math.max(1, ...lat.histogram.map((b) => b.turns));
  fill("latency-histogram", lat.histogram.map((b) => el("div", { class: "bin", title: `${b.from_ms}-${b.from_ms + 100} ms: ${b.turns} turns` },
    el("span", { style: `height:${(100 * b.turns) / peak}%` }), el("small", {}, b.from_ms))));
  fill("stages", el("table", { class: "small" }, Object.entries(lat.stages_p50_ms).map(([s, v]) => el("tr", {}, el("th", {}, s), el("td", {}, `p50 ${ms(v)}`)))));

  const cost = overview.cost;
  fill("cost", el("p", {}, el("strong", { id: "cost-per-minute" }, `${money(cost.per_minute)} a minute`), ` over ${cost.minutes} min (${money(cost.total)})`),
    el("table", { class: "small" }, el("tr", {}, ["day", "agent", "calls", "minutes", "cost/min"].map((h) => el("th", {}, h))),
      cost.by_day.map((d) => el("tr", {}, el("td", {}, d.day), el("td", {}, d.agent), el("td", {}, d.calls), el("td", {}, d.minutes), el("td", {}, money(d.cost_per_minute))))));

  const heat = overview.heatmap;
  const upTo = heat.readings.reduce((last, n, b) => (n ? b + 1 : last), 0);  // no empty tail
  fill("heatmap", upTo
    ? heatTable(heat.states, heat.readings.slice(0, upTo).map((_, b) => `${b * heat.bucket_s}s`),
        heat.mean.map((row) => row.slice(0, upTo)))
    : el("p", { class: "muted" }, "No reading yet."));
  fill("topics", overview.topics.length
    ? el("ul", {}, overview.topics.map((t) => el("li", {}, el("strong", {}, t.cluster), ` · ${t.calls} call(s) · ${t.keywords.join(", ")}`)))
    : el("p", { class: "muted" }, "Topics appear once the workers have analysed calls."));
  renderVariants(variants);
}

function renderVariants(v) {
  if (!v.variants.length) { fill("variants", el("p", { class: "muted" }, "No call with a variant yet: give the Agent variants=[Variant(...), ...].")); return; }
  const mean = (m) => (m.mean === null ? "–" : `${m.mean} (n=${m.n})`);
  fill("variants",
    el("table", { class: "small", id: "variant-table" },
      el("tr", {}, ["variant", "calls", "length s", "handed over", "sentiment", "answer ms"].map((h) => el("th", {}, h))),
      v.variants.map((r) => el("tr", { "data-variant": r.name }, el("td", {}, r.name), el("td", {}, r.calls), el("td", {}, mean(r.duration_s)),
        el("td", {}, `${r.escalation.k}/${r.escalation.n} (${Math.round(r.escalation.rate * 100)} %)`), el("td", {}, mean(r.sentiment)), el("td", {}, mean(r.latency_ms))))),
    v.comparisons.map((c) => el("div", { class: "comparison" }, el("h3", {}, `${c.variant} against ${c.baseline}`),
      el("ul", {}, Object.entries(c.tests).map(([m, t]) => el("li", { class: t.real ? "real" : "" },
        el("strong", {}, m), t.difference !== undefined ? ` ${t.difference > 0 ? "+" : ""}${t.difference}: ` : ": ", t.says))))));
}

let callPoll = null;
async function showCall(id) {
  clearTimeout(callPoll);
  document.getElementById("home").hidden = true;
  document.getElementById("call-page").hidden = false;
  fill("cp-id", id);
  let data;
  try { data = await api(`/api/calls/${encodeURIComponent(id)}`); } catch (err) {
    fill("cp-facts", el("p", { class: "error" }, "This call is not stored (yet: records are written at hangup)."));
    return;
  }
  const r = data.record;
  const summary = (data.analyses.summary || {}).result || {};
  const sentiment = (data.analyses.sentiment || {}).result || {};
  const topic = (data.analyses.topics || {}).result || {};
  fill("cp-facts", el("dl", {}, [["caller", r.caller], ["called", r.called], ["pbx", r.pbx], ["variant", r.variant || "–"],
    ["started", clock(r.started_at)], ["length", secs(r.duration_s)], ["ended", r.end_reason],
    ["handed to", (r.transfers || []).join(", ") || "–"], ["cost", `${money(r.cost.total)} (${money(r.cost.per_minute)}/min)`],
    ["disposition", summary.disposition || "–"], ["sentiment", sentiment.label ? `${sentiment.label} (${sentiment.overall})` : "–"],
    ["topic", topic.cluster || "–"]].map(([k, v]) => [el("dt", {}, k), el("dd", { "data-fact": k }, v)])));
  const players = document.getElementById("cp-audio");
  const playersKey = `${id}:${r.recordings.join(",")}`;
  if (players.dataset.key !== playersKey) players.dataset.key = playersKey, fill("cp-audio", r.recordings.length
    ? r.recordings.map((leg) => el("figure", {}, el("figcaption", {}, leg === "caller" ? "Caller" : "Agent"),
        el("audio", { controls: true, preload: "metadata", "data-leg": leg, src: `/api/calls/${encodeURIComponent(id)}/audio/${leg}` })))
    : el("p", { class: "muted" }, "No recording (the bridge records both legs with VOICEOS_RECORD_CALLS or --record-dir)."));  // kept while it plays
  fill("cp-summary", summary.summary ? el("p", { id: "cp-summary-text" }, summary.summary)
    : el("p", { class: "muted" }, r.completed_at ? "No summary." : "Being analysed…"),
    (summary.action_items || []).length ? el("ul", {}, summary.action_items.map((a) => el("li", {}, a))) : null);
  const lines = (r.turns || []).map((t) => ({ role: t.role, text: t.text, interrupted: t.interrupted, planned: t.planned_text }));
  for (const tc of r.tool_calls || []) lines.push({ role: "mark", kind: "tool", text: `${tc.name}(${tc.arguments}) → ${tc.result}` });
  fill("cp-transcript", transcriptItems(lines, ""));
  fill("cp-heat", data.heat.turns.length
    ? heatTable(data.heat.states, data.heat.turns.map((t) => `${t.t}s`), data.heat.states.map((_, i) => data.heat.turns.map((t) => t.scores[i])))
    : el("p", { class: "muted" }, "No reading."));
  fill("cp-latency", latencyBars(r.latency || []));
  const flags = [...(r.review_flags || []).map((f) => f.reason), ...(((data.analyses.qa || {}).result || {}).flags || []).map((f) => `${f.kind}: ${f.reason || ""}`)];
  fill("cp-flags", flags.length ? el("ul", {}, flags.map((f) => el("li", {}, f))) : el("p", { class: "muted" }, "None."));
  if (!r.completed_at) {  // the analyses are still coming: look again
    callPoll = setTimeout(() => { if (location.hash === `#/call/${id}`) showCall(id); }, 2000);
  }
}

let refreshTimer = null;
function refreshSoon() {
  clearTimeout(refreshTimer);
  refreshTimer = setTimeout(() => route(), 500);
}

function route() {
  const m = location.hash.match(/^#\/call\/(.+)$/);
  if (m) { showCall(decodeURIComponent(m[1])); return; }
  document.getElementById("home").hidden = false;
  document.getElementById("call-page").hidden = true;
  refreshHome().then(render).catch((err) => fill("source", `cannot load: ${err.message}`));
}

window.addEventListener("hashchange", route);
setInterval(renderLive, 1000);
route();
connect();
