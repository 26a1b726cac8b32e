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
