// The Requests page: the request log (GET /admin/requests) with its filters, and one
// request (GET /admin/requests/{id}) as a timeline of its attempts: retries, the relay
// point with the characters delivered before it, each error.

import { api, query } from "./api.js";
import { byId, clip, el, ms, svg, usd } from "./dom.js";

let cursor = null;
let asked = 0; // the latest load: an earlier answer that arrives after it is dropped

function filters() {
  const form = byId("request-filters");
  const since = form.elements.since.value;
  return {
    key: form.elements.key.value.trim(),
    model: form.elements.model.value.trim(),
    provider: form.elements.provider.value.trim(),
    status: form.elements.status.value,
    since: since ? new Date(since).toISOString() : "",
    limit: 50,
  };
}

function requestRow(record) {
  const time = new Date(record.time);
  return el(
    "tr",
    { data: { requestId: record.id }, class: `status-${record.status}`, tabindex: 0 },
    el("td", { title: record.time }, time.toLocaleTimeString()),
    el("td", { class: "mono", title: record.id }, clip(record.id, 28)),
    el("td", { class: "key" }, record.key ?? "–"),
    el("td", { class: "model", title: record.model }, clip(record.model, 40)),
    el("td", {}, record.provider ?? "–"),
    el("td", { class: "status" }, el("span", { class: `badge ${record.status}` }, record.status)),
    el("td", { class: "num" }, record.attempts.length),
    el("td", { class: "num" }, ms(record.ttft_ms)),
    el("td", { class: "num" }, ms(record.duration_ms)),
    el("td", { class: "num" }, usd(record.cost_usd)),
  );
}

async function loadPage(more) {
  const message = byId("requests-message");
  const body = byId("requests-table").tBodies[0];
  asked += 1;
  const mine = asked;
  try {
    const page = await api("GET", `admin/requests${query({ ...filters(), cursor: more ? cursor : "" })}`);
    if (mine !== asked) return;
    const rows = page.data.map(requestRow);
    if (more) body.append(...rows);
    else body.replaceChildren(...rows);
    cursor = page.next_cursor;
    byId("more-requests").hidden = !cursor;
    message.textContent = body.rows.length ? "" : "No request matches.";
  } catch (error) {
    if (mine === asked) message.textContent = error.message;
  }
}

export function showRequests() {
  loadPage(false);
}

const LABEL_W = 200;
const BAR_W = 770;
const ROW_H = 46;
const NOTE_W = 330; // room a bar's note needs to its right, on the line under the bar

function attemptLabel(attempt, index) {
  return `${index + 1} · ${attempt.provider} (${attempt.model})`;
}

/** What the note under an attempt's bar says: its outcome, its text, where it took over. */
function attemptNote(attempt) {
  const notes = [attempt.outcome];
  if (attempt.ttft_ms !== null) notes.push(`first chunk at ${ms(attempt.ttft_ms)}`);
  if (attempt.chars) notes.push(`${attempt.chars} chars`);
  if (attempt.relay_offset) notes.push(`took over at ${attempt.relay_offset}`);
  if (attempt.error_type) notes.push(attempt.status_code ? `${attempt.status_code} ${attempt.error_type}` : attempt.error_type);
  return notes.join(" · ");
}

function drawTimeline(record) {
  const node = byId("request-timeline");
  const attempts = record.attempts;
  const end = Math.max(
    record.duration_ms || 0,
    ...attempts.map((a) => (a.started_ms || 0) + (a.duration_ms || 0)),
    1,
  );
  const scale = (BAR_W - 10) / end;
  const height = ROW_H * attempts.length + 34;
  node.setAttribute("viewBox", `0 0 ${LABEL_W + BAR_W} ${height}`);
  const parts = [];
  attempts.forEach((attempt, index) => {
    const top = index * ROW_H + 8;
    const x = LABEL_W + attempt.started_ms * scale;
    const width = Math.max(3, (attempt.duration_ms || 0) * scale);
    parts.push(
      svg("text", { class: "label", x: 0, y: top + 13 }, clip(attemptLabel(attempt, index), 30)),
      svg("rect", { class: `bar ${attempt.outcome}`, x, y: top, width, height: 16, rx: 3 }),
    );
    if (attempt.ttft_ms !== null) {
      const at = x + attempt.ttft_ms * scale;
      parts.push(svg("line", { class: "ttft", x1: at, x2: at, y1: top - 2, y2: top + 18 }));
    }
    if (attempt.relay_offset) {
      parts.push(svg("line", { class: "relay", x1: x, x2: x, y1: top - 6, y2: top + 22 }));
    }
    const noteX = Math.min(x, LABEL_W + BAR_W - NOTE_W);
    parts.push(svg("text", { class: "note", x: noteX, y: top + 31 }, attemptNote(attempt)));
  });
  const axis = attempts.length * ROW_H + 12;
  parts.push(
    svg("line", { class: "axis", x1: LABEL_W, x2: LABEL_W + BAR_W - 10, y1: axis, y2: axis }),
    svg("text", { class: "tick", x: LABEL_W, y: axis + 14 }, "0"),
    svg("text", { class: "tick", x: LABEL_W + BAR_W - 10, y: axis + 14, "text-anchor": "end" }, ms(end)),
  );
  node.replaceChildren(...parts);
}

function attemptRow(attempt, index) {
  const relay = attempt.relay_offset
    ? `took over at ${attempt.relay_offset} characters delivered`
    : index === 0 ? "first" : "retry";
  const error = attempt.error_type
    ? `${attempt.status_code ? `${attempt.status_code} ` : ""}${attempt.error_type}: ${attempt.error || ""}`
    : "";
  return el(
    "tr",
    { class: `outcome-${attempt.outcome}` },
    el("td", {}, index + 1),
    el("td", {}, attempt.provider),
    el("td", { class: "model" }, attempt.model),
    el("td", {}, el("span", { class: `badge ${attempt.outcome}` }, attempt.outcome)),
    el("td", { class: "num" }, ms(attempt.started_ms)),
    el("td", { class: "num" }, ms(attempt.ttft_ms)),
    el("td", { class: "num" }, ms(attempt.duration_ms)),
    el("td", { class: "num chars" }, attempt.chars),
    el("td", { class: "relay" }, relay),
    el("td", { class: "error-text" }, error),
  );
}

function summary(record) {
  const usage = record.usage || {};
  const pairs = [
    ["Time", record.time], ["Endpoint", record.endpoint], ["Key", record.key ?? "–"],
    ["Team", record.team ?? "–"], ["Model", record.model], ["Resolved", record.resolved_model ?? "–"],
    ["Served by", record.provider ?? "–"], ["Status", record.status],
    ["Finish", record.finish_reason ?? "–"], ["TTFT", ms(record.ttft_ms)],
    ["Duration", ms(record.duration_ms)],
    ["Tokens", `${usage.input_tokens ?? 0} in, ${usage.output_tokens ?? 0} out`],
    ["Cost", `${usd(record.cost_usd)} (${record.cost_status})`], ["Cache", record.cache ?? "–"],
  ];
  if (record.error_type) pairs.push(["Error", `${record.error_type}: ${record.error || ""}`]);
  return pairs.flatMap(([term, value]) => [el("dt", {}, term), el("dd", {}, value)]);
}

export async function showRequest(id) {
  byId("request-title").textContent = `Request ${id}`;
  const message = byId("request-message");
  message.textContent = "";
  try {
    const record = await api("GET", `admin/requests/${encodeURIComponent(id)}`);
    byId("request-summary").replaceChildren(...summary(record));
    drawTimeline(record);
    byId("request-attempts").tBodies[0].replaceChildren(...record.attempts.map(attemptRow));
    const content = record.content
      ? [el("h3", {}, "Content"), el("pre", {}, JSON.stringify(record.content, null, 2))]
      : [];
    byId("request-content").replaceChildren(...content);
  } catch (error) {
    message.textContent = error.message;
  }
}

export function setUpRequests(open) {
  byId("request-filters").addEventListener("submit", (event) => {
    event.preventDefault();
    loadPage(false);
  });
  byId("more-requests").addEventListener("click", () => loadPage(true));
  const body = byId("requests-table").tBodies[0];
  const choose = (event) => {
    const row = event.target.closest("tr");
    if (row && row.dataset.requestId) open(row.dataset.requestId);
  };
  body.addEventListener("click", choose);
  body.addEventListener("keydown", (event) => {
    if (event.key === "Enter") choose(event);
  });
}
