// Shared helpers: fetching JSON (errors become thrown messages) and building elements.

export async function getJSON(url, options) {
  const response = await fetch(url, options);
  let data;
  try {
    data = await response.json();
  } catch {
    throw new Error(`${response.status} ${response.statusText} (the server's answer is not JSON)`);
  }
  if (!response.ok) throw new Error(data.error || `${response.status} ${response.statusText}`);
  return data;
}

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) node.append(child);
  return node;
}

export function showError(where, error) {
  where.replaceChildren(el("p", { class: "error", text: `error: ${error.message}` }));
}

export function fmt(value, digits = 4) {
  if (value === null || value === undefined) return "-";
  if (typeof value !== "number") return String(value);
  return Number.isInteger(value) ? String(value) : value.toPrecision(digits);
}

// A config value in a table cell: numbers and names as they are, anything else as JSON, cut short.
export function valueText(value, limit = 40) {
  if (value === null || value === undefined) return "-";
  const text = typeof value === "object" ? JSON.stringify(value) : fmt(value);
  return text.length > limit ? `${text.slice(0, limit - 1)}…` : text;
}

// A model's shape, short (the runs table: "2 × 4 × 128") or long (a run's page).
export function shapeText(shape, long = false) {
  if (!shape) return "-";
  if (!long) return `${shape.n_layers} × ${shape.n_heads} × ${shape.d_model}`;
  const plural = (n, word) => `${n} ${word}${n === 1 ? "" : "s"}`;
  const parts = [`${plural(shape.n_layers, "layer")} × ${plural(shape.n_heads, "head")} × d_model ${shape.d_model}`];
  if (shape.d_head !== undefined) parts.push(`d_head ${shape.d_head}`);
  if (shape.d_mlp !== undefined) parts.push(shape.d_mlp === 0 ? "no MLP" : `d_mlp ${shape.d_mlp}`);
  return parts.join(", ");
}

// A parameter count, short: "952", "9.95k", "1.20M" (the run page shows it whole).
export function paramsText(params) {
  if (params === null || params === undefined) return "-";
  if (params < 1000) return `${params}`;
  return params < 1e6 ? `${(params / 1e3).toPrecision(3)}k` : `${(params / 1e6).toPrecision(3)}M`;
}

export const PARAMS_NOTE = "every weight, bias and norm gain of the model, counted from its config";

// The config values that tell a run from the others of its kind, task and preset.
export function differsText(differs) {
  const entries = Object.entries(differs || {});
  return entries.length ? entries.map(([k, v]) => `${k} ${valueText(v)}`).join(" · ") : "-";
}
