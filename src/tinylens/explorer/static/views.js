// A study's views: heatmaps (patching scores per layer and head), circuit graphs (components by
// layer, the circuit's edges between them) and curves, as the server lists them.
import { el } from "/static/common.js";
import { lineChart } from "/static/plot.js";

const NS = "http://www.w3.org/2000/svg";

function svg(tag, attrs, text) {
  const node = document.createElementNS(NS, tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
  if (text !== undefined) node.textContent = text;
  return node;
}

// blue for positive, red for negative, white at 0; |v| ≥ 1 is full colour
function colour(v) {
  if (v === null || v === undefined) return "#eee";
  const a = Math.min(1, Math.abs(v));
  return v >= 0 ? `rgba(26, 86, 176, ${a})` : `rgba(201, 42, 42, ${a})`;
}

function heatmap(view) {
  const cell = 46, left = 64, top = 22;
  const width = left + cell * view.cols.length + 4, height = top + cell * view.rows.length + 4;
  const root = svg("svg", { width, height, class: "heatmap" });
  view.cols.forEach((c, j) => root.append(svg("text", { x: left + cell * (j + 0.5), y: 14, "text-anchor": "middle", "font-size": 11 }, c)));
  view.rows.forEach((r, i) => {
    root.append(svg("text", { x: left - 6, y: top + cell * (i + 0.5) + 4, "text-anchor": "end", "font-size": 11 }, r));
    view.cols.forEach((c, j) => {
      const raw = (view.values[i] || [])[j];
      const v = typeof raw === "number" ? raw : null;  // null: nothing measured (or a damaged file)
      root.append(svg("rect", { x: left + cell * j, y: top + cell * i, width: cell - 2, height: cell - 2, fill: colour(v), "data-value": v ?? "" }));
      root.append(svg("text", { x: left + cell * (j + 0.5), y: top + cell * (i + 0.5) + 4, "text-anchor": "middle", "font-size": 10, fill: Math.abs(v ?? 0) > 0.6 ? "#fff" : "#222" }, v === null ? "-" : v.toFixed(2)));
    });
  });
  return root;
}

// node name → [level, slot]: the embedding at the bottom, then per layer its heads and its MLP,
// anything else (the logits) at the top
function place(name, nLayers, nHeads) {
  let m = /^A(\d+)\.(\d+)/.exec(name);
  if (m) return [2 * Number(m[1]) + 1, Number(m[2]) - (nHeads - 1) / 2];
  m = /^M(\d+)$/.exec(name);
  if (m) return [2 * Number(m[1]) + 2, 0];
  if (/^(E|embed)/i.test(name)) return [0, 0];
  return [2 * nLayers + 1, 0];
}

function circuit(view) {
  const { n_layers: nLayers, n_heads: nHeads } = view;
  const levels = 2 * nLayers + 2, dx = 78, dy = 56, width = Math.max(360, dx * (nHeads + 1)), height = dy * levels + 20;
  const xy = (name) => { const [level, slot] = place(name, nLayers, nHeads); return [width / 2 + slot * dx, height - 24 - level * dy]; };
  const root = svg("svg", { width, height, class: "circuit" });
  const scores = view.edge_scores || {};
  const top = Object.values(scores).filter((v) => typeof v === "number").reduce((m, v) => Math.max(m, Math.abs(v)), 1e-9);
  for (const edge of view.edges) {
    if (typeof edge !== "string" || !edge.includes("->")) continue;
    const [from, to] = edge.split("->");
    const [x1, y1] = xy(from), [x2, y2] = xy(to.replace(/\.[qkv]$/, ""));
    const score = typeof scores[edge] === "number" ? scores[edge] : undefined;
    // width by |EAP-IG score| (the strongest edge widest); blue raises the logit difference, red lowers
    const width = score === undefined ? 1.5 : 1 + 5 * Math.abs(score) / top;
    const stroke = score === undefined ? "#888" : score <= 0 ? "rgba(26, 86, 176, 0.7)" : "rgba(201, 42, 42, 0.7)";
    const line = svg("line", { x1, y1, x2, y2, stroke, "stroke-width": width, class: "edge", "data-edge": edge, "data-score": score ?? "" });
    line.append(svg("title", {}, score === undefined ? edge : `${edge}: EAP-IG ${score.toFixed(4)}`));
    root.append(line);
  }
  const names = new Set(view.nodes.map((n) => n.name));
  for (let layer = 0; layer < nLayers; layer++) {
    for (let head = 0; head < nHeads; head++) if (!names.has(`A${layer}.${head}`)) view.nodes.push({ name: `A${layer}.${head}`, off: true });
    if (!names.has(`M${layer}`)) view.nodes.push({ name: `M${layer}`, off: true });
  }
  view.nodes.push({ name: "embed", fixed: true }, { name: "logits", fixed: true });
  for (const node of view.nodes) {
    const [x, y] = xy(node.name);
    const fill = node.off ? "#fff" : node.fixed ? "#ddd" : colour(typeof node.score === "number" ? node.score : 0.5);
    const kind = node.off ? "node off" : node.fixed ? "node fixed" : "node";
    root.append(svg("circle", { cx: x, cy: y, r: node.fixed ? 20 : 16, fill, stroke: node.off ? "#ccc" : "#222", class: kind, "data-node": node.name }));
    root.append(svg("text", { x, y: y + 4, "text-anchor": "middle", "font-size": 10, fill: node.off ? "#aaa" : "#000" }, node.name));
    if (!node.off && typeof node.score === "number") root.append(svg("text", { x: x + 20, y: y - 10, "font-size": 9 }, node.score.toFixed(2)));
  }
  return root;
}

// InversionView's viewer: the query, then the samples nearest first; each token shaded by how much
// the activation raised its likelihood, each distance green inside ε; a line marks ε.
function inversion(view) {
  const num = (v) => (typeof v === "number" ? v : 0);
  const maxShift = view.rows.flatMap((r) => r.shift.map((v) => Math.abs(num(v)))).reduce((m, v) => Math.max(m, v), 1e-9);
  const rows = [];
  let crossed = false;
  for (const row of view.rows) {
    const inside = row.distance < view.epsilon;
    if (!inside && !crossed) {
      crossed = true;
      rows.push(el("div", { class: "epsilon-line", text: `ε = ${view.epsilon}` }));
    }
    const tokens = row.tokens.map((t, i) =>
      el("span", { style: `background: rgba(26, 86, 176, ${Math.max(0, num(row.shift[i])) / maxShift})`, title: `shift ${row.shift[i]}`, text: t }));
    rows.push(el("div", { class: inside ? "sample inside" : "sample outside" },
      el("span", { class: "distance", text: typeof row.distance === "number" ? row.distance.toFixed(3) : "-" }), " ",
      el("span", { class: "tokens" }, ...tokens), el("span", { class: "muted", text: ` ×${row.count}` })));
  }
  if (!crossed) rows.push(el("div", { class: "epsilon-line", text: `ε = ${view.epsilon} (every sample shown is inside)` }));
  return el("div", { class: "inversion" }, el("p", {}, "query: ", el("code", { text: view.query })), ...rows);
}

export function studyViews(views) {
  return views.map((view) => {
    try {
      return drawView(view);
    } catch (error) {  // one view that cannot be drawn must not take the page with it
      return el("div", { class: "chart study-view" }, el("h3", { text: view.title ?? "view" }),
        el("p", { class: "error", text: `cannot draw this view: ${error.message}` }));
    }
  });
}

function drawView(view) {
  const body = view.kind === "heatmap" ? heatmap(view)
    : view.kind === "circuit" ? circuit(view)
    : view.kind === "inversion" ? inversion(view)
    : lineChart([{ name: view.y_label, steps: view.x, values: view.y }], { logX: true, xLabel: view.x_label });
  const note = view.score ? el("p", { class: "muted", text: `node labels: ${view.score}` }) : "";
  return el("div", { class: "chart study-view", "data-kind": view.kind }, el("h3", { text: view.title }), body, note);
}
