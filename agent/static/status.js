"use strict";
const API = "api/v1/gateway/backpressure";
const HISTORY_API = "api/v1/gateway/history";
const POLL_MS = 1000;          // how often the page asks for the state
const HISTORY_MS = 5000;       // how often it asks for the charts' new samples
const TIMEOUT_MS = 2500;       // an answer later than this counts as none
const SPAN_S = 600;            // the charts: the last 10 minutes
const LATENCY_BOUND_S = 0.1;   // the contract's 100 ms for critical events
const CLASSES = ["critical", "high", "normal", "low"];
const SVG = "http://www.w3.org/2000/svg";

let lastGood = null;           // {doc, at}: the last answer, and when (laptop ms)
let chart = null;              // {epoch, cols}: the charts' columns, one epoch only
let seenEpoch = null;
let restarted = false;

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
  if (r === null || r === undefined) return "\u2014";
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
  if (s === null || s === undefined) return "n/a";
  if (s < 0.001) return Math.round(s * 1e6) + " \u00b5s";
  if (s < 1) return +(s * 1000).toFixed(s < 0.01 ? 2 : 1) + " ms";
  return +s.toFixed(2) + " s";
}

function clock(ms) {
  return new Date(ms).toLocaleTimeString("en-GB", {hour12: false});
}

function dateTime(s) {
  return new Date(s * 1000).toLocaleString("en-GB", {
    day: "numeric", month: "short", year: "numeric", hour: "2-digit", minute: "2-digit",
    hour12: false,
  });
}

// The agent's own rates (`rates`: one window of its history, so they agree
// with each other); null until it has two samples, a second after its start.
function rate(...keys) {
  return num(get(lastGood && lastGood.doc, "rates", ...keys));
}

// ------------------------------------------------------------ latency

// Smallest bucket bound holding the q-quantile: "p99 <= bound". Infinity past the last.
function quantile(buckets, total, q) {
  if (total <= 0) return null;
  for (const [le, n] of buckets) if (n >= q * total) return le;
  return Infinity;
}

function bound(q, last, beyond) {
  // "<= 25 ms" for a bucket bound; past the last bound only "> last" is known.
  if (q === null || q === undefined) return "n/a";
  if (beyond || q === Infinity) return "> " + seconds(last);
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
  // The start as a date and time; the epoch (its milliseconds) tells a person nothing.
  if (num(a.started_at)) meta.push("since " + dateTime(a.started_at));
  if (restarted) meta.push("RESTARTED while this page was open");
  if (typeof a.version === "string") meta.push("v" + a.version);
  if (typeof a.ingest_path === "string") meta.push(a.ingest_path + " ingest");
  setText("agent-meta", meta.join(" \u00b7 "));
}

function renderUpstream(doc) {
  const u = get(doc, "upstream") || {};
  const subs = num(u.subscribers);
  let connected = u.connected;
  if (typeof connected !== "boolean") connected = subs === null ? null : subs > 0;
  const card = $("upstream");
  card.className = "card " + (connected === false ? "down" : connected ? "up" : "");
  if (connected === false) {
    setText("up-state", "\u2716 NOT CONNECTED");
    setText("up-detail", "no head-end subscriber: events are held here");
  } else if (connected) {
    setText("up-state", "\u2714 CONNECTED");
    let detail = count(subs) + (subs === 1 ? " subscriber" : " subscribers");
    if (num(u.peers) !== null) detail += " \u00b7 " + count(u.peers) + (u.peers === 1 ? " peer" : " peers");
    setText("up-detail", detail);
  } else {
    setText("up-state", "state unknown");
    setText("up-detail", "this agent does not report its upstream");
  }
  const rows = [["sent", rateText(rate("events_out")) + " events/s"]];
  const br = rate("blocked");
  // Refused sends are normal on the shallow pipe: a count, not an alarm.
  rows.push(["refused sends", count(num(u.blocked)) + (br ? " (" + rateText(br) + "/s now)" : "")]);
  if (u.stalled === true) rows.push(["STALLED", "a subscriber stopped reading", "flag bad"]);
  if (num(u.stuck_dropped_messages) !== null) {
    let text = count(u.stuck_dropped_messages) + " msgs";
    if (num(u.stuck_dropped_events) !== null) text += " \u00b7 " + count(u.stuck_dropped_events) + " events";
    rows.push(["dropped for stuck", text, u.stuck_dropped_messages ? "flag bad" : ""]);
  }
  kv("up-kv", rows);
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
    tr.append(el("td", "in", rateText(rate("classes", name, "in"))));
    tr.append(el("td", "out", rateText(rate("classes", name, "out"))));
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

// The classes written through to disk, from `spill.write_through` (a list of
// classes, or class -> bool / {enabled}); null when the agent does not say.
function writeThrough(spill) {
  const w = get(spill, "write_through");
  if (Array.isArray(w)) return CLASSES.filter((c) => w.includes(c));
  if (w && typeof w === "object") {
    return CLASSES.filter((c) => {
      let v = w[c];
      if (v && typeof v === "object") v = v.enabled ?? v.on;
      return v === true;
    });
  }
  return null;
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
  const wt = writeThrough(s);
  if (wt !== null) rows.push(["write-through", wt.length ? wt.join(", ") : "none"]);
  const corrupt = num(s.corrupt_records);
  if (corrupt) rows.push(["CORRUPT records", count(corrupt) + " skipped", "flag bad"]);
  kv("spill-kv", rows);
}

function renderLatency(doc) {
  const h = get(doc, "latency", "critical");
  if (!h || !Array.isArray(h.buckets) || num(h.count) === null) {
    setText("lat-p99", "n/a");
    setText("lat-note", "this agent does not measure it yet");
    kv("lat-kv", []);
    return;
  }
  const last = h.buckets.length ? h.buckets[h.buckets.length - 1][0] : 0;
  const p99all = quantile(h.buckets, h.count, 0.99);
  const recent = get(doc, "rates", "critical_latency");
  const rows = [];
  if (recent && num(recent.count) > 0) {
    const beyond = Array.isArray(recent.beyond) ? recent.beyond : [];
    // At least "1 s": the window is the agent's own history, never zero.
    const win = Math.max(1, Math.round(recent.window_s));
    setText("lat-p99", "p99 " + bound(recent.p99_s, last, beyond.includes("p99_s")));
    setText("lat-note", (recent.p99_s > LATENCY_BOUND_S ? "OVER 100 ms \u00b7 " : "")
      + count(recent.count) + " events in the last " + win + " s");
    rows.push(["p50", bound(recent.p50_s, last, beyond.includes("p50_s"))],
      ["max", bound(recent.max_s, last, beyond.includes("max_s"))]);
  } else {
    setText("lat-p99", h.count ? "p99 " + bound(p99all, last) : "n/a");
    setText("lat-note", recent ? "none in the last " + Math.max(1, Math.round(recent.window_s))
      + " s" + (h.count ? "; p99 since start" : "") : h.count ? "p99 since start" : "none measured yet");
  }
  rows.push(["events, total", count(h.count)]);
  if (h.count) {
    rows.push(["p99, total", bound(p99all, last)],
      ["mean, total", seconds(num(h.sum_s) !== null ? h.sum_s / h.count : null)]);
  }
  kv("lat-kv", rows);
}

function renderRejects(doc) {
  const total = num(get(doc, "rejected", "total"));
  setText("rej-total", count(total));
  const r = rate("rejected");
  const win = rate("window_s");
  setText("rej-rate", r ? "total \u00b7 " + rateText(r) + "/s now"
    : total ? (win ? "total \u00b7 none in the last " + Math.max(1, Math.round(win)) + " s" : "total")
    : "none since start");
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
  setText("in-rate", rateText(rate("events_in")));
  const i = get(doc, "ingest") || {};
  const rows = [
    ["frames/s", rateText(rate("frames_in"))],
    ["events, total", count(num(i.events))],
    ["disconnects", count(num(i.disconnects))],
  ];
  if (num(i.unauthorized) !== null) {
    rows.push(["unauthorized", count(num(i.unauthorized)), i.unauthorized ? "flag bad" : ""]);
  }
  const lane = i.lane;
  if (lane && typeof lane === "object") {
    if (lane.configured === false) {
      rows.push(["alert lane", "not configured"]);
    } else {
      rows.push(["lane events", count(num(lane.events))]);
      const nc = num(lane.noncritical);
      if (nc !== null) rows.push(["lane, not critical", count(nc), nc ? "flag bad" : ""]);
    }
  }
  kv("in-kv", rows);
}

function renderAlarms(doc) {
  const listed = get(doc, "alarms");
  const alarms = Array.isArray(listed)
    ? listed.filter((a) => a && typeof a.name === "string")
      .map((a) => [a.level === "bad" ? "bad" : "warn", a.name, String(a.detail || ""),
        String(a.action || "")])
    : [["warn", "ALARMS UNKNOWN", "this agent does not report its alarms", ""]];
  if (!alarms.length) alarms.push(["ok", "\u2714 OK", "no alarms", ""]);
  const box = $("alarms");
  const key = JSON.stringify(alarms);
  if (box.dataset.key !== key) {
    box.replaceChildren(...alarms.map(([level, head, detail, action]) => {
      const div = el("div", "alarm " + level);
      div.append(el("span", "name", head), el("span", "detail", " \u2014 " + detail));
      if (action) div.append(el("span", "action", "\u2192 " + action));
      return div;
    }));
    box.dataset.key = key;
  }
  return alarms;
}

function render(doc) {
  const epoch = get(doc, "agent", "epoch");
  if (seenEpoch !== null && epoch !== seenEpoch) {
    restarted = true;             // a restart: its counters began again at zero
    chart = null;                 // and its history: the charts start over
  }
  seenEpoch = epoch;
  renderHeader(doc);
  renderUpstream(doc);
  renderMemory(doc);
  renderClasses(doc);
  renderSpill(doc);
  renderLatency(doc);
  renderRejects(doc);
  renderIngest(doc);
  const alarms = renderAlarms(doc);
  const id = get(doc, "agent", "id") || "edge-agent";
  const worst = alarms.filter((a) => a[0] === "bad").map((a) => a[1]);
  document.title = (worst.length ? worst.join(", ") + " \u00b7 " : "") + id;
}

// ------------------------------------------------------------ charts

// Each chart: a title, the latest figures, the top of its scale, and an SVG
// whose viewBox is stretched to the card (lines keep their width through
// vector-effect). Time runs over the last SPAN_S seconds to the newest sample.
const W = 600, H = 100, PAD = 3;

const CHARTS = [
  ...CLASSES.map((c) => ({id: "chart-" + c, title: c + " events/s", kind: "rate", cls: c})),
  {id: "chart-memory", title: "memory", kind: "memory"},
  {id: "chart-disk", title: "on disk", kind: "disk"},
  {id: "chart-latency", title: "critical latency p99", kind: "latency"},
];

function svg(tag, cls, attrs) {
  const e = document.createElementNS(SVG, tag);
  if (cls) e.setAttribute("class", cls);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  return e;
}

function buildCharts() {
  const grid = $("chart-grid");
  for (const c of CHARTS) {
    const fig = el("figure", "chart");
    fig.id = c.id;
    const cap = el("figcaption");
    cap.append(el("span", "title", c.title), el("span", "now", ""), el("span", "scale", ""));
    const box = svg("svg", null, {viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: "none",
      role: "img", "aria-label": c.title + ", last 10 minutes"});
    fig.append(cap, box);
    grid.append(fig);
  }
}

// A path through the points, broken where a value is missing or samples are
// more than 3 s apart (the page was away, or the agent stalled).
function pathOf(ts, values, x, y, area) {
  let d = "", run = [];
  const flush = () => {
    if (!run.length) return;
    if (area) {
      d += `M${run[0][0]},${H - PAD}` + run.map(([a, b]) => `L${a},${b}`).join("")
        + `L${run[run.length - 1][0]},${H - PAD}Z`;
    } else if (run.length === 1) {
      d += `M${run[0][0] - 1},${run[0][1]}h2`;
    } else {
      d += `M${run[0][0]},${run[0][1]}` + run.slice(1).map(([a, b]) => `L${a},${b}`).join("");
    }
    run = [];
  };
  for (let i = 0; i < ts.length; i++) {
    const v = values[i];
    if (i > 0 && ts[i] - ts[i - 1] > 3) flush();
    if (v === null || v === undefined) { flush(); continue; }
    run.push([x(ts[i]).toFixed(1), y(v).toFixed(1)]);
  }
  flush();
  return d;
}

function niceMax(v) {
  if (!(v > 0)) return 1;
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 2, 2.5, 5, 10]) if (v <= m * p) return m * p;
  return 10 * p;
}

function drawChart(c, cols) {
  const fig = $(c.id);
  const box = fig.querySelector("svg");
  const ts = cols.t;
  const end = ts.length ? ts[ts.length - 1] : 0;
  const x = (t) => (t - (end - SPAN_S)) / SPAN_S * W;
  const last = (arr) => arr && arr.length ? arr[arr.length - 1] : null;
  const parts = [];
  let now = "", scale = "";
  const lin = (max) => (v) => H - PAD - Math.min(1, v / max) * (H - 2 * PAD);
  if (c.kind === "rate") {
    const ins = cols.in[c.cls], outs = cols.out[c.cls];
    const max = niceMax(Math.max(1, ...ins, ...outs));
    parts.push(svg("path", "area in", {d: pathOf(ts, ins, x, lin(max), true)}));
    parts.push(svg("path", "line in", {d: pathOf(ts, ins, x, lin(max), false)}));
    parts.push(svg("path", "line out", {d: pathOf(ts, outs, x, lin(max), false)}));
    now = "in " + rateText(last(ins)) + " \u00b7 out " + rateText(last(outs));
    scale = "\u2191 " + rateText(max);
  } else if (c.kind === "memory") {
    const budget = last(cols.budget_bytes) || Math.max(1, ...cols.capacity_bytes);
    const y = lin(budget);
    parts.push(svg("path", "area used", {d: pathOf(ts, cols.used_bytes, x, y, true)}));
    parts.push(svg("path", "line used", {d: pathOf(ts, cols.used_bytes, x, y, false)}));
    parts.push(svg("path", "line cap", {d: pathOf(ts, cols.capacity_bytes, x, y, false)}));
    now = bytes(last(cols.used_bytes)) + " used \u00b7 " + bytes(last(cols.capacity_bytes)) + " cap";
    scale = "\u2191 budget " + bytes(budget);
  } else if (c.kind === "disk") {
    const max = niceMax(Math.max(1, ...cols.pending_events));
    const y = lin(max);
    parts.push(svg("path", "area disk", {d: pathOf(ts, cols.pending_events, x, y, true)}));
    parts.push(svg("path", "line disk", {d: pathOf(ts, cols.pending_events, x, y, false)}));
    now = count(last(cols.pending_events)) + " events";
    scale = "\u2191 " + count(max);
  } else {
    // Log scale, 0.5 ms to at least 1 s: the 100 ms bound sits in the middle.
    const vals = cols.latency_p99_s;
    const top = Math.max(1, ...vals.filter((v) => v !== null));
    const lo = Math.log10(0.0005), hi = Math.log10(top);
    const y = (v) => H - PAD - (Math.log10(Math.max(v, 0.0005)) - lo) / (hi - lo) * (H - 2 * PAD);
    const yb = y(LATENCY_BOUND_S).toFixed(1);
    parts.push(svg("path", "bound", {d: `M0,${yb}H${W}`}));
    parts.push(svg("path", "line lat", {d: pathOf(ts, vals, x, y, false)}));
    const over = vals.map((v) => v !== null && v > LATENCY_BOUND_S ? v : null);
    parts.push(svg("path", "line over", {d: pathOf(ts, over, x, y, false)}));
    let recent = null;
    for (let i = vals.length - 1; i >= 0 && i >= vals.length - 60; i--) {
      if (vals[i] !== null) { recent = vals[i]; break; }
    }
    now = recent === null ? "none lately" : "\u2264 " + seconds(recent);
    scale = "log \u00b7 line 100 ms";
  }
  box.replaceChildren(...parts);
  fig.querySelector(".now").textContent = now;
  fig.querySelector(".scale").textContent = scale;
}

function drawCharts() {
  if (!chart) return;
  for (const c of CHARTS) drawChart(c, chart.cols);
  const n = chart.cols.t.length;
  setText("chart-note", n ? "10 min ago \u2192 now (" + clock(chart.cols.t[n - 1] * 1000)
    + "), one point a second. Events: in filled, out dashed; memory: used filled, capacity"
    + " dotted" : "no history yet: the agent keeps one sample a second");
}

// New samples are appended; what is older than the span goes.
function merge(old, add) {
  if (!old) return add;
  const cat = (a, b) => a.concat(b);
  const out = {};
  for (const [k, v] of Object.entries(add)) {
    if (Array.isArray(v)) out[k] = cat(old[k] || [], v);
    else if (v && typeof v === "object") {
      out[k] = {};
      for (const [k2, v2] of Object.entries(v)) out[k][k2] = cat((old[k] || {})[k2] || [], v2);
    }
  }
  const t = out.t, end = t.length ? t[t.length - 1] : 0;
  let drop = 0;
  while (drop < t.length && t[drop] < end - SPAN_S - 1) drop++;
  if (drop) {
    for (const [k, v] of Object.entries(out)) {
      if (Array.isArray(v)) out[k] = v.slice(drop);
      else for (const k2 of Object.keys(v)) v[k2] = v[k2].slice(drop);
    }
  }
  return out;
}

async function pollHistory() {
  const ctl = new AbortController();
  const timer = setTimeout(() => ctl.abort(), TIMEOUT_MS);
  try {
    const t = chart && chart.cols.t.length ? chart.cols.t[chart.cols.t.length - 1] : null;
    const url = HISTORY_API + (t !== null ? "?since=" + encodeURIComponent(String(t)) : "");
    const resp = await fetch(url, {cache: "no-store", signal: ctl.signal,
      headers: {Accept: "application/json"}});
    if (!resp.ok) return;
    const doc = await resp.json();
    const cols = get(doc, "series");
    if (!cols || !Array.isArray(cols.t)) return;
    const epoch = get(doc, "agent", "epoch");
    if (chart && chart.epoch !== epoch) chart = null;
    chart = {epoch, cols: merge(chart && chart.cols, cols)};
    drawCharts();
  } catch (e) {
    // The state poll says STALE; the charts keep their last picture.
  } finally {
    clearTimeout(timer);
    setTimeout(pollHistory, HISTORY_MS);
  }
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

buildCharts();
poll();
pollHistory();
