// The Live page: the entries' table, four tiles and the last hour's charts, from
// GET /admin/live. The stream is read with fetch, which sends the admin key in a
// header (EventSource cannot send one), and reopened after a break.

import { authorized, failure, session } from "./api.js";
import { drawChart } from "./chart.js";
import { ago, byId, clip, el, ms, percent, usd } from "./dom.js";

const SPAN = 3600;
const RETRY_MS = 2000;

let history = null; // {end, series: {name: [...]}}
let stream = null; // the AbortController of the open stream

/** Split server-sent events out of ``buffer``: [events, the incomplete rest]. */
function parseEvents(buffer) {
  const events = [];
  let rest = buffer;
  let end = rest.indexOf("\n\n");
  while (end >= 0) {
    const block = rest.slice(0, end);
    rest = rest.slice(end + 2);
    const event = { name: "message", data: "" };
    for (const line of block.split("\n")) {
      if (line.startsWith("event: ")) event.name = line.slice(7);
      else if (line.startsWith("data: ")) event.data += line.slice(6);
    }
    events.push(event);
    end = rest.indexOf("\n\n");
  }
  return [events, rest];
}

function addPoint(second, point) {
  if (history.end !== null && second <= history.end) return;
  // A snapshot this tab missed (it was busy) leaves its second empty, as the server's
  // history does: each series stays one value a second.
  const missed = history.end === null ? 0 : Math.min(second - history.end - 1, SPAN);
  for (const [name, values] of Object.entries(history.series)) {
    for (let i = 0; i < missed; i += 1) values.push(name.startsWith("ttft") ? null : 0);
    values.push(point[name] ?? null);
    if (values.length > SPAN) values.splice(0, values.length - SPAN);
  }
  history.end = second;
}

function lastValues(name, count) {
  return history.series[name].slice(-count);
}

function sum(values) {
  return values.reduce((total, value) => total + (value || 0), 0);
}

function showTiles(snapshot) {
  byId("tile-in-flight").textContent = String(snapshot.in_flight);
  byId("tile-requests").textContent = String(sum(lastValues("requests", 60)));
  byId("tile-errors").textContent = String(sum(lastValues("errors", 60)));
  byId("tile-cost").textContent = usd(sum(lastValues("cost_usd", SPAN)));
  byId("tile-state").textContent = snapshot.state;
}

function limitsCell(limits) {
  if (!limits.length) return el("td", { class: "limits muted" }, "none");
  return el(
    "td",
    { class: "limits" },
    ...limits.map((limit) => {
      const full = limit.used >= limit.limit;
      return el("div", { class: full ? "limit full" : "limit" }, `${limit.name} ${limit.used}/${limit.limit}`);
    }),
  );
}

function circuitCell(entry) {
  if (entry.cooling_down) return el("td", { class: "circuit" }, el("span", { class: "badge bad" }, entry.circuit));
  const badge = el("span", { class: entry.unusable ? "badge warn" : "badge good" }, entry.unusable || entry.circuit);
  return el("td", { class: "circuit" }, badge);
}

function lastErrorCell(error) {
  if (!error) return el("td", { class: "last-error muted" }, "none");
  const what = [error.status_code, error.type].filter(Boolean).join(" ");
  const message = `${what}: ${error.message || ""}`;
  return el("td", { class: "last-error", title: message }, clip(message, 140), el("div", { class: "muted" }, ago(error.at)));
}

function modelsCell(entry) {
  const shown = entry.models.join(", ") || "any";
  const more = entry.models_total > entry.models.length ? ` (+${entry.models_total - entry.models.length})` : "";
  return el("td", { class: "models", title: shown }, clip(shown, 80) + more);
}

function entryRow(entry) {
  return el(
    "tr",
    { data: { entry: entry.name }, class: entry.cooling_down ? "cooling" : undefined },
    el("td", { class: "name" }, el("strong", {}, entry.name), el("div", { class: "muted" }, entry.type)),
    modelsCell(entry),
    circuitCell(entry),
    el("td", { class: "num in-flight" }, entry.in_flight),
    limitsCell(entry.limits),
    el("td", { class: "num ttft-p50" }, ms(entry.ttft_p50_ms)),
    el("td", { class: "num ttft-p99" }, ms(entry.ttft_p99_ms)),
    el("td", { class: "num error-rate" }, percent(entry.error_rate)),
    el("td", { class: "num attempts" }, entry.attempts_1m),
    lastErrorCell(entry.last_error),
  );
}

function showCharts() {
  const series = history.series;
  const span = Number(byId("chart-span").value);
  const rate = (v) => v.toFixed(v < 10 ? 1 : 0);
  drawChart(byId("chart-requests"), [
    { values: series.requests, how: "mean" },
    { values: series.failed_requests, how: "mean" },
  ], { span, format: rate });
  drawChart(byId("chart-ttft"), [
    { values: series.ttft_p50_ms, how: "mean" },
    { values: series.ttft_p99_ms, how: "max" },
  ], { span, format: ms });
  drawChart(byId("chart-errors"), [{ values: series.errors, how: "mean" }], { span, format: rate });
  drawChart(byId("chart-cost"), [{ values: series.cost_usd, how: "mean", scale: 60 }], {
    span,
    format: usd,
  });
}

function show(snapshot) {
  byId("live-table").tBodies[0].replaceChildren(...snapshot.entries.map(entryRow));
  showTiles(snapshot);
  if (!byId("page-live").hidden) showCharts();
}

function handle(event) {
  const data = JSON.parse(event.data);
  if (event.name === "opening") {
    history = data.history;
    show(data);
  } else if (event.name === "snapshot") {
    addPoint(data.second, data.point);
    show(data);
  }
}

function say(text) {
  byId("connection").textContent = text;
}

async function read(answer) {
  const reader = answer.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    let events;
    [events, buffer] = parseEvents(buffer + value);
    events.forEach(handle);
  }
}

/**
 * Open the live stream: resolves once the gateway answered (rejects with its ApiError
 * when the key is refused), then reads on and reopens after a break until stopLive().
 */
export async function startLive() {
  stopLive();
  const controller = new AbortController();
  stream = controller;
  const answer = await fetch("admin/live", authorized({ signal: controller.signal }));
  if (!answer.ok) {
    stream = null;
    throw await failure(answer);
  }
  say("live");
  read(answer)
    .catch(() => undefined) // a break or an abort: decided below
    .then(() => {
      if (stream !== controller) return; // stopped, or replaced
      say("reconnecting…");
      setTimeout(() => reopen(controller), RETRY_MS);
    });
}

function reopen(controller) {
  if (stream !== controller || !session.key) return;
  startLive().catch((error) => {
    if (error.status === 401) session.signOut();
    else {
      say(`reconnecting… (${error.message})`);
      stream = controller;
      setTimeout(() => reopen(controller), RETRY_MS);
    }
  });
}

export function stopLive() {
  const open = stream;
  stream = null;
  if (open) open.abort();
}

export function setUpLive() {
  byId("chart-span").addEventListener("change", refreshCharts);
}

/** Draw the charts now (the Live page was hidden while they were updated). */
export function refreshCharts() {
  if (history) showCharts();
}
