// Attention patterns: one heatmap per layer and head (query rows, key columns), and a token strip;
// hovering a token shades every token by how much the selected head, from the hovered token,
// attends to it. Clicking a heatmap selects its head.
import { el } from "/static/common.js";

const SIZE = 150;

function heatmap(pattern, onSelect) {
  const n = pattern.length;
  const canvas = el("canvas", { width: SIZE, height: SIZE, class: "attention-map" });
  const ctx = canvas.getContext("2d");
  const cell = SIZE / n;
  for (let q = 0; q < n; q++) {
    for (let k = 0; k < n; k++) {
      const v = pattern[q][k];
      ctx.fillStyle = `rgba(26, 86, 176, ${Math.min(1, v)})`;
      ctx.fillRect(k * cell, q * cell, Math.ceil(cell), Math.ceil(cell));
    }
  }
  canvas.addEventListener("click", onSelect);
  return canvas;
}

export function attentionView(result) {
  const { attention, tokens, prompt_len: promptLen } = result;
  let selected = [0, 0];
  const caption = el("p", { class: "muted" });
  const strip = el("div", { class: "tokens" }, ...tokens.map((t, i) =>
    el("span", { class: i >= promptLen ? "answer" : "", "data-pos": i, text: t })));
  const spans = [...strip.children];
  const describe = () => { caption.textContent = `selected head L${selected[0]}H${selected[1]}: hover a token to see where it attends`; };
  spans.forEach((span, q) => {
    span.addEventListener("mouseenter", () => {
      const row = attention[selected[0]][selected[1]][q];
      spans.forEach((s, k) => { s.style.background = `rgba(217, 72, 15, ${Math.min(1, row[k] ?? 0)})`; });
      caption.textContent = `L${selected[0]}H${selected[1]} from token ${q} (${tokens[q]})`;
    });
    span.addEventListener("mouseleave", () => { spans.forEach((s) => { s.style.background = ""; }); describe(); });
  });
  const layers = attention.map((heads, layer) => el("div", {},
    el("h3", { text: `layer ${layer}` }),
    el("div", { class: "heads" }, ...heads.map((pattern, head) =>
      el("div", { class: "head", "data-head": `L${layer}H${head}` },
        heatmap(pattern, () => { selected = [layer, head]; describe(); }),
        el("div", { text: `L${layer}H${head}` }))))));
  describe();
  return el("div", { id: "attention" }, caption, strip, ...layers);
}
