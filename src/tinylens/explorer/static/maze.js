// A maze as SVG: walls where two neighbouring cells are not connected, the origin (green), the
// target (red), the true path (blue) and the model's path (orange, offset a little).
const NS = "http://www.w3.org/2000/svg";
const CELL = 40;

function svg(tag, attrs) {
  const node = document.createElementNS(NS, tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
  return node;
}

export function mazeView(maze) {
  const { n, connections, origin, target, path, predicted } = maze;
  const open = new Set(connections.map(([a, b]) => [a.join(","), b.join(",")].sort().join("|")));
  const joined = (a, b) => open.has([a.join(","), b.join(",")].sort().join("|"));
  const size = n * CELL + 8;
  const root = svg("svg", { width: size, height: size, id: "maze" });
  const at = (v) => 4 + v * CELL;
  for (let r = 0; r < n; r++) {
    for (let c = 0; c < n; c++) {
      if (c + 1 < n && !joined([r, c], [r, c + 1])) root.append(svg("line", { x1: at(c + 1), y1: at(r), x2: at(c + 1), y2: at(r + 1), stroke: "#000", "stroke-width": 3, class: "wall" }));
      if (r + 1 < n && !joined([r, c], [r + 1, c])) root.append(svg("line", { x1: at(c), y1: at(r + 1), x2: at(c + 1), y2: at(r + 1), stroke: "#000", "stroke-width": 3, class: "wall" }));
    }
  }
  root.append(svg("rect", { x: 4, y: 4, width: n * CELL, height: n * CELL, fill: "none", stroke: "#000", "stroke-width": 4 }));
  const centre = ([r, c], offset = 0) => `${at(c + 0.5) + offset},${at(r + 0.5) + offset}`;
  const line = (cells, colour, offset, id) => {
    if (cells.length) root.append(svg("polyline", { points: cells.map((x) => centre(x, offset)).join(" "), fill: "none", stroke: colour, "stroke-width": 4, opacity: 0.8, id }));
  };
  line(path, "#1a56b0", 0, "true-path");
  line(predicted, "#d9480f", 5, "predicted-path");
  root.append(svg("circle", { cx: at(origin[1] + 0.5), cy: at(origin[0] + 0.5), r: 8, fill: "#2b8a3e" }));
  root.append(svg("rect", { x: at(target[1] + 0.5) - 8, y: at(target[0] + 0.5) - 8, width: 16, height: 16, fill: "#c92a2a" }));
  return root;
}
