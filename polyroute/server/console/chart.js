// A small SVG line chart of the last hour, one value a second: no library, nothing
// fetched. The newest value is at the right edge; an hour ago at the left.

import { svg } from "./dom.js";

const WIDTH = 560;
const HEIGHT = 150;
const PAD = { left: 52, right: 8, top: 10, bottom: 20 };
const MAX_BUCKETS = 240; // a point per 2 px at most

function reduce(values, span, size, how) {
  // Whole seconds per bucket (a fraction would alias: 1.25 s buckets hold one or two
  // one-second values in turn). Bucket i holds the values aged (count - 1 - i) buckets
  // from the newest.
  const count = Math.ceil(span / size);
  const sums = new Array(count).fill(0);
  const counts = new Array(count).fill(0);
  const maxes = new Array(count).fill(null);
  const newest = values.length - 1;
  for (let index = newest; index >= 0 && newest - index < span; index -= 1) {
    const value = values[index];
    if (value === null || value === undefined) continue;
    const bucket = count - 1 - Math.floor((newest - index) / size);
    sums[bucket] += value;
    counts[bucket] += 1;
    maxes[bucket] = maxes[bucket] === null ? value : Math.max(maxes[bucket], value);
  }
  return sums.map((sum, i) => {
    if (!counts[i]) return null;
    return how === "max" ? maxes[i] : sum / counts[i];
  });
}

function ceiling(value) {
  if (value <= 0) return 1;
  const power = 10 ** Math.floor(Math.log10(value));
  const steps = [1, 2, 2.5, 5, 10];
  return power * steps.find((step) => step * power >= value);
}

/**
 * Draw ``series`` ([{values, how: "mean"|"max", scale}]) into ``node``, spanning
 * ``span`` seconds, with ``format`` for the axis value.
 */
export function drawChart(node, series, { span = 3600, format = String } = {}) {
  const size = Math.ceil(span / MAX_BUCKETS);
  const reduced = series.map((line) =>
    reduce(line.values, span, size, line.how).map((v) => (v === null ? null : v * (line.scale || 1))),
  );
  const buckets = Math.ceil(span / size);
  const top = ceiling(Math.max(0, ...reduced.flat().filter((v) => v !== null)));
  const plotW = WIDTH - PAD.left - PAD.right;
  const plotH = HEIGHT - PAD.top - PAD.bottom;
  const x = (i) => PAD.left + (plotW * i) / (buckets - 1);
  const y = (v) => PAD.top + plotH - (plotH * v) / top;
  node.setAttribute("viewBox", `0 0 ${WIDTH} ${HEIGHT}`);
  const parts = [
    svg("line", { class: "axis", x1: PAD.left, x2: WIDTH - PAD.right, y1: y(0), y2: y(0) }),
    svg("line", { class: "grid", x1: PAD.left, x2: WIDTH - PAD.right, y1: y(top), y2: y(top) }),
    svg("line", { class: "grid", x1: PAD.left, x2: WIDTH - PAD.right, y1: y(top / 2), y2: y(top / 2) }),
    svg("text", { class: "tick", x: PAD.left - 4, y: y(top) + 4, "text-anchor": "end" }, format(top)),
    svg("text", { class: "tick", x: PAD.left - 4, y: y(0) + 4, "text-anchor": "end" }, format(0)),
    svg("text", { class: "tick", x: PAD.left, y: HEIGHT - 4 }, `−${Math.round(span / 60)} min`),
    svg("text", { class: "tick", x: WIDTH - PAD.right, y: HEIGHT - 4, "text-anchor": "end" }, "now"),
  ];
  reduced.forEach((values, index) => {
    // A gap (no traffic in a bucket) breaks the line rather than drawing through it.
    let run = [];
    const flush = () => {
      if (run.length === 1) run.push([run[0][0] + 2, run[0][1]]); // a lone point: a dash
      const points = run.map(([px, py]) => `${px.toFixed(1)},${py.toFixed(1)}`).join(" ");
      if (run.length) parts.push(svg("polyline", { class: `line s${index}`, points }));
      run = [];
    };
    values.forEach((value, i) => {
      if (value === null) flush();
      else run.push([x(i), y(value)]);
    });
    flush();
  });
  node.replaceChildren(...parts);
}
