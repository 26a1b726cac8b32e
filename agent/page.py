"""`GET /`: the technician's status page, one self-contained HTML document.

This module owns the page: its markup, style and script, and the headers it is
served with. It promises:

- No external asset of any kind (the box has no internet, and a maintenance
  laptop may have none either): CSS and JS are inline, the favicon is a data
  URL, and the Content-Security-Policy allows nothing but this page's own
  script and style (by hash) and fetches to the same origin. A page that
  tried to load anything else would be blocked, not silently slow.
- The page is static: nothing from the agent is interpolated on the server.
  The script polls `api/v1/gateway/backpressure` (relative, so it also works
  behind a path-prefixing proxy) once a second and writes every value it
  shows with `textContent`, never as markup, so an agent id or a reject
  reason cannot inject anything.
- It reads the JSON document the way `edge-agent status` does (status.py):
  only the contract's fields are required; everything else is optional and
  shows as "?" or "n/a" when missing, so one page works with older and newer
  agents.
- What a technician must see in seconds is said in words, not colour alone:
  NOT CONNECTED, DROPPED, INGEST PAUSED, LOOP STALLED, and STALE when the
  agent stops answering (the last values stay, dimmed and marked STALE).

Client-side computations (they need two snapshots, which only the browser has):
rates are counter deltas over the agent's own `agent.taken_at` (not the
laptop's clock) across the last ~5 s; critical latency quantiles are read off
the histogram's bucket deltas over the last ~60 s (`latency.critical`; "n/a"
while no critical event has been measured, or from an older agent without it).
"""

from __future__ import annotations

import base64
import hashlib

STYLE = """
:root {
  --bg: #eceff3; --card: #ffffff; --fg: #14171c; --muted: #495060; --line: #c4cad4;
  --bad: #b0001a; --bad-fg: #ffffff; --warn: #ffd23f; --warn-fg: #14171c;
  --good: #17692c; --good-bg: #dff2e3; --used: #24528f; --cap: #a9bfdf;
  --font: system-ui, "Segoe UI", Roboto, "DejaVu Sans", "Liberation Sans", Arial, sans-serif;
}
@media (prefers-color-scheme: dark) {
  :root {
    --bg: #111418; --card: #1c2128; --fg: #eef1f5; --muted: #b4bcc8; --line: #3a424e;
    --bad: #ff5c6c; --bad-fg: #14171c; --warn: #ffd23f; --warn-fg: #14171c;
    --good: #7fdc95; --good-bg: #173222; --used: #6fa2e8; --cap: #37506f;
  }
}
* { box-sizing: border-box; }
html { font-size: 16px; }
body {
  margin: 0; padding: 10px 12px 16px; background: var(--bg); color: var(--fg);
  font-family: var(--font); line-height: 1.35; font-variant-numeric: tabular-nums;
}
h1, h2, p { margin: 0; }
h1 { font-size: 1.35rem; }
h2 {
  font-size: .8rem; text-transform: uppercase; letter-spacing: .06em;
  color: var(--muted); margin-bottom: 6px;
}
header { display: flex; flex-wrap: wrap; gap: 6px 16px; align-items: center; }
header .meta { color: var(--muted); }
#conn { margin-left: auto; font-weight: 700; padding: 3px 10px; border-radius: 4px;
  border: 2px solid var(--muted); color: var(--fg); background: var(--card); }
body.live #conn { border-color: var(--good); color: var(--good); background: var(--good-bg); }
#stale {
  display: none; margin-top: 8px; padding: 10px 14px; border-radius: 4px;
  border: 3px solid var(--fg); color: var(--warn-fg); font-size: 1.15rem; font-weight: 700;
  background: repeating-linear-gradient(-45deg, var(--warn) 0 14px, #ffe98f 14px 28px);
}
body.stale #stale { display: block; }
body.stale #conn { border-color: var(--fg); color: var(--warn-fg); background: var(--warn); }
body.stale main, body.stale #alarms { opacity: .5; filter: grayscale(1); }
#alarms { margin: 8px 0; display: grid; gap: 6px; }
.alarm { padding: 8px 12px; border-radius: 4px; font-weight: 700; border: 2px solid; }
.alarm.bad { background: var(--bad); color: var(--bad-fg); border-color: var(--bad); }
.alarm.warn { background: var(--warn); color: var(--warn-fg); border-color: var(--warn-fg); }
.alarm.ok { background: var(--good-bg); color: var(--good); border-color: var(--good); }
.alarm .detail { font-weight: 400; }
main { display: grid; grid-template-columns: repeat(12, minmax(0, 1fr)); gap: 10px; }
.card { background: var(--card); border: 1px solid var(--line); border-radius: 6px;
  padding: 10px 12px; grid-column: span 3; min-width: 0; }
#upstream { grid-column: span 4; }
#upstream dl.kv dd { text-align: left; }
#memory { grid-column: span 8; }
#classes { grid-column: span 12; }
.big { font-size: 1.6rem; font-weight: 800; line-height: 1.15; }
.sub { color: var(--muted); font-size: .9rem; }
#upstream.down { border: 3px solid var(--bad); }
#upstream.down .big { color: var(--bad); }
#upstream.up .big { color: var(--good); }
.bar { position: relative; height: 30px; border: 2px solid var(--fg); border-radius: 3px;
  background: var(--card); overflow: hidden; margin: 4px 0 6px; }
.bar > div { position: absolute; top: 0; bottom: 0; left: 0; }
#bar-cap { background: repeating-linear-gradient(90deg, var(--cap) 0 6px, transparent 6px 9px);
  border-right: 3px solid var(--fg); }
#bar-used { background: var(--used); }
#bar-used.high, .swatch.used.high {
  background: repeating-linear-gradient(-45deg, #a36b00 0 6px, #c98a00 6px 12px);
}
#bar-used.full, .swatch.used.full {
  background: repeating-linear-gradient(-45deg, var(--bad) 0 6px, #7a0012 6px 12px);
}
dl.kv { display: grid; grid-template-columns: auto 1fr; margin: 0; font-size: .95rem; }
dl.kv dt { color: var(--muted); white-space: nowrap; }
dl.kv dd { margin: 0; font-weight: 600; text-align: right; white-space: nowrap; }
dl.kv dt, dl.kv dd { border-bottom: 1px solid var(--line); padding: 1px 0; }
dl.kv dt { padding-right: 12px; }
.card > .sub { margin-bottom: 6px; }
.legend { display: flex; flex-wrap: wrap; gap: 2px 18px; }
.legend b { font-size: 1.1rem; }
.swatch { display: inline-block; width: .9em; height: .9em; border: 1px solid var(--fg);
  vertical-align: -.1em; margin-right: 4px; }
.swatch.used { background: var(--used); }
.swatch.cap { background: repeating-linear-gradient(90deg, var(--cap) 0 3px, transparent 3px 5px); }
table { border-collapse: collapse; width: 100%; }
th, td { padding: 4px 8px; text-align: right; border-bottom: 1px solid var(--line);
  white-space: nowrap; }
th:first-child, td:first-child { text-align: left; }
thead th { font-size: .8rem; color: var(--muted); font-weight: 600; }
tbody th { font-weight: 700; }
td .n { font-weight: 700; }
td .b { color: var(--muted); font-size: .85rem; }
td.drop { background: var(--bad); color: var(--bad-fg); font-weight: 800; }
td.drop .b { color: var(--bad-fg); }
.wide { overflow-x: auto; }
.flag { font-weight: 800; }
.flag.bad { color: var(--bad); }
ul.reasons { list-style: none; margin: 0; padding: 0; }
ul.reasons li { display: flex; justify-content: space-between; gap: 8px;
  border-bottom: 1px solid var(--line); }
footer { margin-top: 10px; color: var(--muted); font-size: .85rem; }
@media (max-width: 900px) {
  .card { grid-column: span 6; }
  #upstream, #memory, #classes { grid-column: span 12; }
}
@media (max-width: 600px) {
  body { padding: 8px; }
  .card, #upstream, #memory, #classes { grid-column: span 12; }
  .opt, td .b { display: none; }
  table { font-size: .85rem; }
  th, td { padding: 4px 0 4px 5px; }
  th:first-child, td:first-child { padding-left: 0; }
  td.drop { white-space: normal; }
  #conn { margin-left: 0; }
}
"""

BODY = """
<header>
  <h1>edge-agent <span id="agent-id">?</span></h1>
  <span class="meta" id="agent-meta">waiting for the first answer</span>
  <span id="conn" role="status">CONNECTING</span>
</header>
<div id="stale" role="alert"></div>
<section id="alarms" aria-label="Alarms" aria-live="polite"></section>
<main>
  <section class="card" id="upstream" aria-labelledby="h-up">
    <h2 id="h-up">Head-end (upstream)</h2>
    <p class="big" id="up-state">?</p>
    <p class="sub" id="up-detail"></p>
    <dl class="kv">
      <dt>sent</dt><dd id="up-rate">?</dd>
      <dt>blocked sends</dt><dd id="up-blocked">?</dd>
    </dl>
  </section>
  <section class="card" id="memory" aria-labelledby="h-mem">
    <h2 id="h-mem">Memory buffer <span id="mem-governor"></span></h2>
    <div class="bar" id="bar" role="meter" aria-valuemin="0" aria-label="memory used">
      <div id="bar-cap"></div><div id="bar-used"></div>
    </div>
    <div class="legend">
      <span><span class="swatch used" id="mem-swatch"></span>used <b id="mem-used">?</b>
        <span id="mem-used-pct" class="sub"></span></span>
      <span><span class="swatch cap"></span>capacity <b id="mem-cap">?</b>
        <span id="mem-cap-pct" class="sub"></span></span>
      <span>budget <b id="mem-budget">?</b> <span class="sub">hard ceiling</span></span>
    </div>
  </section>
  <section class="card wide" id="classes" aria-labelledby="h-cls">
    <h2 id="h-cls">Classes</h2>
    <table>
      <thead><tr>
        <th scope="col">class</th><th scope="col">in/s</th><th scope="col">out/s</th>
        <th scope="col">memory</th><th scope="col">on disk</th>
        <th scope="col">dropped</th>
        <th scope="col" class="opt">received</th><th scope="col" class="opt">delivered</th>
      </tr></thead>
      <tbody id="class-rows"></tbody>
    </table>
  </section>
  <section class="card" id="spill" aria-labelledby="h-spill">
    <h2 id="h-spill">On disk (spill)</h2>
    <p class="big" id="spill-pending">?</p>
    <p class="sub" id="spill-eta"></p>
    <dl class="kv" id="spill-kv"></dl>
  </section>
  <section class="card" id="latency" aria-labelledby="h-lat">
    <h2 id="h-lat">Critical latency</h2>
    <p class="big" id="lat-p99">n/a</p>
    <p class="sub" id="lat-note"></p>
    <dl class="kv" id="lat-kv"></dl>
  </section>
  <section class="card" id="rejects" aria-labelledby="h-rej">
    <h2 id="h-rej">Rejected input</h2>
    <p class="big" id="rej-total">?</p>
    <p class="sub" id="rej-rate"></p>
    <ul class="reasons" id="rej-list"></ul>
  </section>
  <section class="card" id="ingest" aria-labelledby="h-in">
    <h2 id="h-in">Ingest (collectors)</h2>
    <p class="big" id="in-rate">?</p>
    <p class="sub">events/s in</p>
    <dl class="kv" id="in-kv"></dl>
  </section>
</main>
<footer>Refreshed every second from <code>/api/v1/gateway/backpressure</code>.
  Rates are over the last 5 s, latency over the last 60 s. Prometheus: <code>/metrics</code>.
</footer>
"""

SCRIPT = r"""
"use strict";
const API = "api/v1/gateway/backpressure";
const POLL_MS = 1000;          // how often the page asks
const TIMEOUT_MS = 2500;       // an answer later than this counts as none
const RATE_WINDOW_S = 5;       // rates: counter deltas over this much agent time
const LATENCY_WINDOW_S = 60;   // latency quantiles: bucket deltas over this much
const STALL_AFTER_MS = 5000;   // the loop snapshots 4x/s: 5 s unchanged is stuck
const LATENCY_BOUND_S = 0.1;   // the contract's 100 ms for critical events
const CLASSES = ["critical", "high", "normal", "low"];

let history = [];              // [{t, doc}], oldest first, one epoch only
let lastGood = null;           // {doc, at}: the last answer, and when (laptop ms)
let lastTakenAt = null;
let takenChangedAt = 0;
let restartedAt = null;

const $ = (id) => document.getElementById(id);

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

function setText(id, text) {
  const e = $(id);
  if (e.textContent !== text) e.textContent = text;
}

function get(o, ...keys) {
  for (const k of keys) {
    if (o === null || typeof o !== "object") return undefined;
    o = o[k];
  }
  return o;
}

function num(v) {
  return typeof v === "number" && Number.isFinite(v) ? v : null;
}

function count(n) {
  return n === null ? "?" : Math.round(n).toLocaleString("en-US");
}

function bytes(n) {
  if (n === null) return "?";
  if (Math.abs(n) < 1024) return Math.round(n) + " B";
  const units = ["KiB", "MiB", "GiB", "TiB"];
  let i = -1;
  do { n /= 1024; i++; } while (Math.abs(n) >= 1024 && i < units.length - 1);
  return n.toFixed(1) + " " + units[i];
}

function pct(part, whole) {
  if (part === null || !whole) return "?";
  const r = 100 * part / whole;
  return r > 999 ? ">999%" : r.toFixed(r < 10 ? 1 : 0) + "%";
}

function rateText(r) {
  if (r === null) return "\u2014";
  if (r === 0) return "0";
  if (r < 10) return r.toFixed(1);
  return Math.round(r).toLocaleString("en-US");
}

function duration(s) {
  if (s === null) return "?";
  if (s < 1) return "<1s";
  s = Math.floor(s);
  const d = Math.floor(s / 86400), h = Math.floor(s % 86400 / 3600);
  const m = Math.floor(s % 3600 / 60), sec = s % 60;
  const two = (x) => String(x).padStart(2, "0");
  if (s < 60) return sec + "s";
  if (s < 3600) return m + "m " + two(sec) + "s";
  if (s < 86400) return h + "h " + two(m) + "m";
  return d + "d " + h + "h " + two(m) + "m";
}

function seconds(s) {
  if (s === null) return "n/a";
  if (s === Infinity) return "\u221e";
  if (s < 0.001) return Math.round(s * 1e6) + " \u00b5s";
  if (s < 1) return +(s * 1000).toFixed(s < 0.01 ? 2 : 1) + " ms";
  return +s.toFixed(2) + " s";
}

function clock(ms) {
  return new Date(ms).toLocaleTimeString("en-GB", {hour12: false});
}

// ------------------------------------------------------------ history and rates

function remember(doc) {
  const epoch = get(doc, "agent", "epoch");
  const last = history[history.length - 1];
  if (last && get(last.doc, "agent", "epoch") !== epoch) {
    history = [];                 // a restart: counters began again at zero
    restartedAt = Date.now();
  }
  const t = num(get(doc, "agent", "taken_at")) ?? Date.now() / 1000;
  if (t !== lastTakenAt) {
    lastTakenAt = t;
    takenChangedAt = performance.now();
  }
  if (!last || t > last.t) history.push({t, doc});
  while (history.length > 2 && history[1].t < t - LATENCY_WINDOW_S) history.shift();
}

// The oldest remembered snapshot within `window` s of the newest (not the newest).
function since(window) {
  const newest = history[history.length - 1];
  for (const h of history) {
    if (h !== newest && h.t >= newest.t - window - 0.5) return h;
  }
  return null;
}

function rate(...keys) {
  const old = since(RATE_WINDOW_S);
  if (!old) return null;
  const newest = history[history.length - 1];
  const a = num(get(old.doc, ...keys)), b = num(get(newest.doc, ...keys));
  if (a === null || b === null || b < a) return null;
  return (b - a) / (newest.t - old.t);
}

// ------------------------------------------------------------ latency

function histogram(doc) {
  const h = get(doc, "latency", "critical");
  if (!h || !Array.isArray(h.buckets) || num(h.count) === null) return null;
  return h;
}

// Smallest bucket bound holding the q-quantile: "p99 <= bound". Infinity past the last.
function quantile(buckets, total, q) {
  if (total <= 0) return null;
  for (const [le, n] of buckets) if (n >= q * total) return le;
  return Infinity;
}

function latencyView(doc) {
  const h = histogram(doc);
  if (!h) return null;
  const view = {h, all: h.count, mean: h.count ? h.sum_s / h.count : null};
  view.p50all = quantile(h.buckets, h.count, 0.5);
  view.p99all = quantile(h.buckets, h.count, 0.99);
  const old = since(LATENCY_WINDOW_S);
  const o = old && histogram(old.doc);
  if (o && o.buckets.length === h.buckets.length) {
    const delta = h.buckets.map(([le, n], i) => [le, n - o.buckets[i][1]]);
    view.recent = h.count - o.count;
    view.window = history[history.length - 1].t - old.t;
    view.p50 = quantile(delta, view.recent, 0.5);
    view.p99 = quantile(delta, view.recent, 0.99);
    view.max = view.recent > 0 ? quantile(delta, view.recent, 1) : null;
  }
  return view;
}

function bound(q, h) {
  // "<= 25 ms" for a bucket bound; past the last bound only "> last" is known.
  if (q === null || q === undefined) return "n/a";
  if (q === Infinity) {
    const last = h.buckets.length ? h.buckets[h.buckets.length - 1][0] : 0;
    return "> " + seconds(last);
  }
  return "\u2264 " + seconds(q);
}

// ------------------------------------------------------------ rendering

function kv(id, rows) {
  const dl = $(id);
  const parts = [];
  for (const [k, v, cls] of rows) {
    parts.push(el("dt", null, k));
    parts.push(el("dd", cls || null, v));
  }
  const key = rows.map((r) => r.join("\u0001")).join("\u0002");
  if (dl.dataset.key !== key) {
    dl.replaceChildren(...parts);
    dl.dataset.key = key;
  }
}

function renderHeader(doc) {
  const a = get(doc, "agent") || {};
  setText("agent-id", typeof a.id === "string" && a.id ? a.id : "(id not reported)");
  const meta = [];
  if (typeof a.state === "string") meta.push(a.state);
  if (num(a.uptime_s) !== null) meta.push("up " + duration(a.uptime_s));
  if (typeof a.version === "string") meta.push("v" + a.version);
  if (num(a.epoch) !== null) meta.push("epoch " + a.epoch);
  setText("agent-meta", meta.join(" \u00b7 "));
}

function renderUpstream(doc) {
  const subs = num(get(doc, "upstream", "subscribers"));
  let connected = get(doc, "upstream", "connected");
  if (typeof connected !== "boolean") connected = subs === null ? null : subs > 0;
  const card = $("upstream");
  card.className = "card " + (connected === false ? "down" : connected ? "up" : "");
  if (connected === false) {
    setText("up-state", "\u2716 NOT CONNECTED");
    setText("up-detail", "no head-end subscriber: events are held here");
  } else if (connected) {
    setText("up-state", "\u2714 CONNECTED");
    setText("up-detail", count(subs) + (subs === 1 ? " subscriber" : " subscribers"));
  } else {
    setText("up-state", "state unknown");
    setText("up-detail", "this agent does not report its upstream");
  }
  setText("up-rate", rateText(rate("upstream", "events")) + " events/s");
  const blocked = num(get(doc, "upstream", "blocked"));
  const br = rate("upstream", "blocked");
  setText("up-blocked", count(blocked) + (br ? " (" + rateText(br) + "/s now)" : ""));
}

function renderMemory(doc) {
  const used = num(get(doc, "buffer", "used_bytes"));
  const cap = num(get(doc, "buffer", "capacity_bytes"));
  const budget = num(get(doc, "buffer", "budget_bytes"));
  const gov = get(doc, "buffer", "state");
  setText("mem-governor", typeof gov === "string" ? "\u00b7 governor: " + gov : "");
  setText("mem-used", bytes(used));
  setText("mem-cap", bytes(cap));
  setText("mem-budget", bytes(budget));
  const fill = used !== null && cap ? used / cap : 0;
  const level = fill >= 0.9 ? "full" : fill >= 0.7 ? "high" : "";
  const word = level === "full" ? "FULL \u00b7 " : level === "high" ? "HIGH \u00b7 " : "";
  setText("mem-used-pct", "(" + word + pct(used, budget) + " of budget, "
    + pct(used, cap) + " of capacity)");
  setText("mem-cap-pct", "(" + pct(cap, budget) + " of budget)");
  const width = (v) => budget && v ? Math.min(100, 100 * v / budget) : 0;
  // Any use at all shows: "empty" must mean empty (as in `edge-agent status`).
  const usedW = used ? Math.max(0.5, width(used)) : 0;
  $("bar-used").style.width = usedW + "%";
  $("bar-used").className = level;
  $("mem-swatch").className = "swatch used " + level;
  $("bar-cap").style.width = width(cap) + "%";
  const bar = $("bar");
  bar.setAttribute("aria-valuemax", String(budget || 0));
  bar.setAttribute("aria-valuenow", String(used || 0));
  bar.setAttribute("aria-valuetext", bytes(used) + " used of " + bytes(cap)
    + " capacity, " + bytes(budget) + " budget");
}

function renderClasses(doc) {
  const rows = [];
  for (const name of CLASSES) {
    const p = (k) => num(get(doc, "priorities", name, k));
    let disk = p("pending");
    if (disk === null) disk = num(get(doc, "spill", "pending_by_class", name, "events"));
    const diskBytes = num(get(doc, "spill", "pending_by_class", name, "bytes"));
    const dropped = p("dropped");
    const tr = el("tr");
    tr.id = "class-" + name;
    tr.append(el("th", null, name));
    tr.lastChild.scope = "row";
    tr.append(el("td", "in", rateText(rate("priorities", name, "received"))));
    tr.append(el("td", "out", rateText(rate("priorities", name, "delivered"))));
    const two = (cls, n, b) => {
      const td = el("td", cls);
      td.append(el("span", "n", count(n)));
      if (b !== null) td.append(el("span", "b", " \u00b7 " + bytes(b)));
      return td;
    };
    tr.append(two("mem", p("queued"), p("queued_bytes")));
    tr.append(two("disk", disk, diskBytes));
    const d = el("td", dropped ? "dropped drop" : "dropped",
      dropped ? "DROPPED " + count(dropped) : count(dropped));
    tr.append(d);
    tr.append(el("td", "opt", count(p("received"))));
    tr.append(el("td", "opt", count(p("delivered"))));
    rows.push(tr);
  }
  const body = $("class-rows");
  const key = rows.map((r) => r.textContent).join("|");
  if (body.dataset.key !== key) {
    body.replaceChildren(...rows);
    body.dataset.key = key;
  }
}

function renderSpill(doc) {
  const s = get(doc, "spill");
  if (!s || typeof s !== "object") {
    setText("spill-pending", "?");
    setText("spill-eta", "not reported by this agent");
    kv("spill-kv", []);
    return;
  }
  if (s.enabled === false) {
    setText("spill-pending", "disabled");
    setText("spill-eta", "memory is the only buffer");
  } else {
    const pending = num(s.pending_events);
    setText("spill-pending", count(pending));
    const eta = num(s.drain_eta_s);
    let note = "events waiting \u00b7 " + bytes(num(s.pending_bytes));
    if (eta !== null) note += " \u00b7 drain ETA " + duration(eta);
    else if (pending) note += " \u00b7 drain ETA unknown";
    setText("spill-eta", note);
  }
  const rows = [
    ["files", bytes(num(s.file_bytes))],
    ["spilled, total", count(num(s.spilled_events))],
    ["recovered, total", count(num(s.recovered_events))],
  ];
  const corrupt = num(s.corrupt_records);
  if (corrupt) rows.push(["CORRUPT records", count(corrupt) + " skipped", "flag bad"]);
  kv("spill-kv", rows);
}

function renderLatency(doc) {
  const v = latencyView(doc);
  if (!v) {
    setText("lat-p99", "n/a");
    setText("lat-note", "this agent does not measure it yet");
    kv("lat-kv", []);
    return v;
  }
  const rows = [];
  if (v.recent > 0) {
    setText("lat-p99", "p99 " + bound(v.p99, v.h));
    setText("lat-note", (v.p99 > LATENCY_BOUND_S ? "OVER 100 ms \u00b7 " : "")
      + count(v.recent) + " events in the last " + Math.round(v.window) + " s");
    rows.push(["p50", bound(v.p50, v.h)], ["max", bound(v.max, v.h)]);
  } else {
    setText("lat-p99", v.all ? "p99 " + bound(v.p99all, v.h) : "n/a");
    setText("lat-note", v.recent === 0 ? "none in the last "
      + Math.round(v.window) + " s; p99 since start" : "p99 since start");
  }
  rows.push(["events, total", count(v.all)]);
  if (v.all) rows.push(["p99, total", bound(v.p99all, v.h)], ["mean, total", seconds(v.mean)]);
  kv("lat-kv", rows);
  return v;
}

function renderRejects(doc) {
  const total = num(get(doc, "rejected", "total"));
  setText("rej-total", count(total));
  const r = rate("rejected", "total");
  setText("rej-rate", r ? "total \u00b7 " + rateText(r) + "/s now"
    : total ? "total \u00b7 none in the last 5 s" : "none since start");
  const by = get(doc, "rejected", "by_reason");
  const items = by && typeof by === "object"
    ? Object.entries(by).filter(([, n]) => num(n) !== null)
      .sort((a, b) => b[1] - a[1] || (a[0] < b[0] ? -1 : 1))
    : [];
  const list = $("rej-list");
  const key = JSON.stringify(items);
  if (list.dataset.key !== key) {
    list.replaceChildren(...items.map(([reason, n]) => {
      const li = el("li");
      li.append(el("span", null, reason), el("b", null, count(n)));
      return li;
    }));
    list.dataset.key = key;
  }
}

function renderIngest(doc) {
  setText("in-rate", rateText(rate("ingest", "events")));
  const i = get(doc, "ingest") || {};
  const rows = [
    ["frames/s", rateText(rate("ingest", "frames"))],
    ["events, total", count(num(i.events))],
    ["disconnects", count(num(i.disconnects))],
  ];
  if (num(i.unauthorized) !== null) {
    rows.push(["unauthorized", count(num(i.unauthorized)), i.unauthorized ? "flag bad" : ""]);
  }
  kv("in-kv", rows);
}

function renderAlarms(doc, lat) {
  const alarms = [];
  const held = CLASSES.reduce((s, c) => s + (num(get(doc, "priorities", c, "queued")) || 0), 0);
  const onDisk = num(get(doc, "spill", "pending_events"));
  const subs = num(get(doc, "upstream", "subscribers"));
  let connected = get(doc, "upstream", "connected");
  if (typeof connected !== "boolean") connected = subs === null ? null : subs > 0;
  if (connected === false) {
    alarms.push(["bad", "NOT CONNECTED", "no head-end subscriber; events are held here ("
      + count(held) + " in memory, " + count(onDisk) + " on disk)"]);
  }
  const dropped = CLASSES.map((c) => [c, num(get(doc, "priorities", c, "dropped"))])
    .filter(([, n]) => n);
  if (dropped.length) {
    alarms.push(["bad", "DROPPED", dropped.map(([c, n]) => count(n) + " " + c).join(", ")
      + " (memory and disk were full)"]);
  }
  if (get(doc, "ingest", "paused") === true) {
    alarms.push(["bad", "INGEST PAUSED", "buffers full and nowhere to spill; collectors wait"]);
  }
  const frozen = performance.now() - takenChangedAt;
  if (lastTakenAt !== null && frozen > STALL_AFTER_MS) {
    alarms.push(["bad", "LOOP STALLED", "the agent answers but its numbers have not changed for "
      + duration(frozen / 1000) + "; its event loop may be stuck"]);
  }
  if (lat && lat.recent > 0 && lat.p99 > LATENCY_BOUND_S) {
    alarms.push(["warn", "CRITICAL LATENCY", "p99 " + bound(lat.p99, lat.h)
      + " in the agent over the last " + Math.round(lat.window) + " s (bound: 100 ms)"]);
  }
  const blocked = rate("upstream", "blocked");
  if (blocked) {
    alarms.push(["warn", "SLOW SUBSCRIBER", rateText(blocked) + " sends/s refused by a full pipe"]);
  }
  const state = get(doc, "agent", "state");
  if (typeof state === "string" && state !== "running") {
    alarms.push(["warn", state.toUpperCase(), "the agent is " + state]);
  }
  if (restartedAt !== null && Date.now() - restartedAt < 60000) {
    alarms.push(["warn", "RESTARTED", "new epoch: the agent restarted; rates begin again"]);
  }
  if (!alarms.length) alarms.push(["ok", "\u2714 OK", "no alarms"]);
  const box = $("alarms");
  const key = JSON.stringify(alarms);
  if (box.dataset.key !== key) {
    box.replaceChildren(...alarms.map(([level, head, detail]) => {
      const div = el("div", "alarm " + level);
      div.append(el("span", null, head), el("span", "detail", " \u2014 " + detail));
      return div;
    }));
    box.dataset.key = key;
  }
  return alarms;
}

function render(doc) {
  renderHeader(doc);
  renderUpstream(doc);
  renderMemory(doc);
  renderClasses(doc);
  renderSpill(doc);
  const lat = renderLatency(doc);
  renderRejects(doc);
  renderIngest(doc);
  const alarms = renderAlarms(doc, lat);
  const id = get(doc, "agent", "id") || "edge-agent";
  const worst = alarms.filter((a) => a[0] === "bad").map((a) => a[1]);
  document.title = (worst.length ? worst.join(", ") + " \u00b7 " : "") + id;
}

// ------------------------------------------------------------ polling

function live() {
  document.body.classList.remove("stale");
  document.body.classList.add("live");
  setText("conn", "LIVE \u00b7 " + clock(lastGood.at));
}

function stale(reason) {
  document.body.classList.remove("live");
  document.body.classList.add("stale");
  setText("conn", "STALE");
  let text = "STALE \u2014 agent not answering (" + reason + "). ";
  if (lastGood) {
    const ago = (Date.now() - lastGood.at) / 1000;
    text += "Figures below are from " + clock(lastGood.at) + ", " + duration(ago)
      + " ago. Retrying every second.";
  } else {
    text += "No figures yet. Retrying every second.";
  }
  setText("stale", text);
  document.title = "STALE \u00b7 " + (get(lastGood && lastGood.doc, "agent", "id") || "edge-agent");
}

async function poll() {
  const ctl = new AbortController();
  const timer = setTimeout(() => ctl.abort(), TIMEOUT_MS);
  try {
    let doc;
    try {
      const resp = await fetch(API, {
        cache: "no-store", signal: ctl.signal, headers: {Accept: "application/json"},
      });
      if (!resp.ok) throw new Error("HTTP " + resp.status);
      doc = await resp.json();
    } catch (e) {
      const why = e.name === "AbortError" ? "no answer within " + TIMEOUT_MS / 1000 + " s"
        : e instanceof SyntaxError ? "the answer is not JSON"
        : e.message === "Failed to fetch" ? "connection failed" : e.message || String(e);
      stale(why);
      return;
    }
    if (!doc || typeof doc !== "object" || Array.isArray(doc)) {
      stale("the answer is not a JSON object");
      return;
    }
    lastGood = {doc, at: Date.now()};
    remember(doc);
    try {
      render(doc);
    } catch (e) {
      stale("this page could not read the answer: " + e);
      return;
    }
    live();
  } finally {
    clearTimeout(timer);
    setTimeout(poll, POLL_MS);
  }
}

poll();
"""


def _csp_hash(source: str) -> str:
    digest = hashlib.sha256(source.encode("utf-8")).digest()
    return "'sha256-" + base64.b64encode(digest).decode("ascii") + "'"


HTML = (
    "<!doctype html>\n"
    '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
    '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
    '<meta name="color-scheme" content="light dark">\n'
    "<title>edge-agent</title>\n"
    # A data URL: otherwise every load asks for /favicon.ico (a 404 here).
    '<link rel="icon" href="data:,">\n'
    f"<style>{STYLE}</style>\n</head>\n<body>{BODY}<script>{SCRIPT}</script>\n</body>\n</html>\n"
)
BODY_BYTES = HTML.encode("utf-8")

# Only this page's own script and style run, and it may only talk to its own
# origin: a stray external reference is blocked (and visible in the console)
# instead of hanging on a box with no internet.
CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'none'",
        f"script-src {_csp_hash(SCRIPT)}",
        f"style-src {_csp_hash(STYLE)}",
        "connect-src 'self'",
        "img-src data:",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ]
)

HEADERS: tuple[tuple[str, str], ...] = (
    ("Content-Type", "text/html; charset=utf-8"),
    ("Cache-Control", "no-store"),
    ("Content-Security-Policy", CONTENT_SECURITY_POLICY),
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "no-referrer"),
)
