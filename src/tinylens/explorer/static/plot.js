// Line charts as SVG, with optional log axes; no library (the page must work offline and the
// charts are simple: a few series of (step, value) points). A fraction chart (an accuracy) is
// always linear and always ends at 1, so 100% sits at the top; a flat line of any other chart sits
// in the middle of its axis.
const NS = "http://www.w3.org/2000/svg";
const COLOURS = ["#1a56b0", "#d9480f", "#2b8a3e", "#862e9c", "#c2255c", "#0b7285", "#5c940d", "#e67700"];
const W = 380, H = 230, PAD = { left: 52, right: 10, top: 10, bottom: 34 };

function svg(tag, attrs) {
  const node = document.createElementNS(NS, tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
  return node;
}

function scale(lo, hi, log, from, to) {
  const f = log ? Math.log10 : (v) => v;
  const a = f(lo), b = f(hi);
  return (v) => from + ((f(v) - a) / (b - a || 1)) * (to - from);
}

function ticks(lo, hi, log) {
  if (log) {
    const out = [];
    for (let e = Math.floor(Math.log10(lo)); e <= Math.ceil(Math.log10(hi)); e++) {
      const v = 10 ** e;
      if (v >= lo * 0.999 && v <= hi * 1.001) out.push(v);
    }
    return out.length >= 2 ? out : [lo, hi];
  }
  return [0, 0.25, 0.5, 0.75, 1].map((t) => lo + t * (hi - lo));
}

function label(v) {
  const a = Math.abs(v);
  return a !== 0 && (a >= 1e4 || a < 1e-2) ? v.toExponential(0) : String(+v.toPrecision(3));
}

// The y-axis's ends: a fraction's axis ends at 1 (or its largest value) and starts at its smallest
// value rounded down to a tenth (0 when every value is 1); any other axis spans its values, widened
// around a flat line so that it does not sit on an edge.
function yDomain(lo, hi, { log, fraction }) {
  if (fraction) {
    const top = Math.max(1, hi);
    const bottom = Math.floor(lo * 10) / 10;
    return [bottom < top ? bottom : top - 1, top];
  }
  if (lo !== hi) return [lo, hi];
  if (log) return [lo / 10, lo * 10];
  const d = Math.abs(lo) / 2 || 1;
  return [lo - d, lo + d];
}

// series: [{name, steps, values}]; a point that a log axis cannot show (≤ 0) or a null is left out.
// fraction: the values are shares in [0, 1] (a linear axis whatever logY says).
export function lineChart(series, { logX = false, logY = false, fraction = false, xLabel = "step" } = {}) {
  if (fraction) logY = false;
  const usable = series.map((s) => {
    const points = s.steps.map((x, i) => [x, s.values[i]])
      .filter(([x, y]) => y !== null && (!logX || x > 0) && (!logY || y > 0));
    return { name: s.name, points };
  }).filter((s) => s.points.length);
  const root = svg("svg", { width: W, height: H, class: "plot", "data-log-y": logY, "data-fraction": fraction });
  if (!usable.length) {
    root.append(svg("text", { x: W / 2, y: H / 2, "text-anchor": "middle", "font-size": 12 }));
    root.lastChild.textContent = "no points to draw";
    return root;
  }
  const xs = usable.flatMap((s) => s.points.map((p) => p[0]));
  const ys = usable.flatMap((s) => s.points.map((p) => p[1]));
  // reduce, not Math.min(...xs): a long run's series can exceed the engine's argument limit
  const lo = (a) => a.reduce((m, v) => (v < m ? v : m), Infinity);
  const hi = (a) => a.reduce((m, v) => (v > m ? v : m), -Infinity);
  const [x0, x1] = [lo(xs), hi(xs)];
  const [y0, y1] = yDomain(lo(ys), hi(ys), { log: logY, fraction });
  root.setAttribute("data-y-min", y0);
  root.setAttribute("data-y-max", y1);
  const sx = scale(x0, x1 === x0 ? x0 + 1 : x1, logX, PAD.left, W - PAD.right);
  const sy = scale(y0, y1, logY, H - PAD.bottom, PAD.top);
  root.append(svg("rect", { x: PAD.left, y: PAD.top, width: W - PAD.left - PAD.right, height: H - PAD.top - PAD.bottom, fill: "none", stroke: "#999" }));
  for (const v of ticks(x0, x1 === x0 ? x0 + 1 : x1, logX)) {
    const t = svg("text", { x: sx(v), y: H - PAD.bottom + 14, "text-anchor": "middle", "font-size": 10 });
    t.textContent = label(v);
    root.append(t);
  }
  for (const v of ticks(y0, y1, logY)) {
    const t = svg("text", { x: PAD.left - 4, y: sy(v) + 3, "text-anchor": "end", "font-size": 10 });
    t.textContent = label(v);
    root.append(t);
  }
  const xl = svg("text", { x: (W + PAD.left) / 2, y: H - 4, "text-anchor": "middle", "font-size": 11 });
  xl.textContent = xLabel + (logX ? " (log)" : "");
  root.append(xl);
  usable.forEach((s, i) => {
    const colour = COLOURS[i % COLOURS.length];
    const d = s.points.map(([x, y], j) => `${j ? "L" : "M"}${sx(x).toFixed(1)},${sy(y).toFixed(1)}`).join("");
    root.append(svg("path", { d, fill: "none", stroke: colour, "stroke-width": 1.5, "data-series": s.name, "data-points": s.points.length }));
    // the key sits top right, or bottom right on a fraction chart (where the lines end at the top)
    const y = fraction ? H - PAD.bottom - 6 - 12 * (usable.length - 1 - i) : PAD.top + 12 + 12 * i;
    const key = svg("text", { x: W - PAD.right - 4, y, "text-anchor": "end", "font-size": 10, fill: colour });
    key.textContent = s.name;
    root.append(key);
  });
  return root;
}
