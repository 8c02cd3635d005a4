// The start page: every run of the workspace in a table that filters as you type and sorts by
// any column (click its header; again to reverse). A run's name links to its page. Each model's
// shape and size, and the config values that tell a run from the others of its kind, task and
// preset, are columns: runs of one sweep or study differ only there.
import { PARAMS_NOTE, differsText, el, fmt, getJSON, paramsText, shapeText, showError } from "/static/common.js";

// key: the sort key (and data-key of the header); text: the cell's text; sort: the value sorted by.
const COLUMNS = [
  { key: "name", label: "run" },
  { key: "kind", label: "kind" },
  { key: "task", label: "task" },
  { key: "preset", label: "preset" },
  { key: "shape", label: "layers × heads × d_model", text: (r) => shapeText(r.shape),
    sort: (r) => (r.shape ? [r.shape.n_layers, r.shape.n_heads, r.shape.d_model] : null) },
  { key: "d_mlp", label: "d_mlp", text: (r) => fmt(r.shape?.d_mlp), sort: (r) => r.shape?.d_mlp },
  { key: "params", label: "params", text: (r) => paramsText(r.params), title: PARAMS_NOTE },
  { key: "differs", label: "differs", text: (r) => differsText(r.differs), sort: (r) => differsText(r.differs),
    title: "config values that differ among the runs of the same kind, task and preset" },
  { key: "status", label: "status" },
  { key: "step", label: "steps" },
  { key: "acc", label: "held-out exact", text: (r) => (r.acc === null ? "-" : `${(100 * r.acc).toFixed(2)}%`) },
  { key: "created", label: "created", text: (r) => new Date(r.created * 1000).toLocaleString() },
];
const SEARCHED = ["name", "task", "preset", "kind", "status", "shape", "differs"];
let rows = [];
let sortKey = "created";
let ascending = false;

const column = (key) => COLUMNS.find((c) => c.key === key);
const text = (row, key) => (column(key).text ?? ((r) => fmt(r[key])))(row);
const sortValue = (row, key) => (column(key).sort ?? ((r) => r[key]))(row);

// null and undefined first; arrays (a shape) element by element
function compare(x, y) {
  if (x === null || x === undefined) return y === null || y === undefined ? 0 : -1;
  if (y === null || y === undefined) return 1;
  if (Array.isArray(x)) {
    for (let i = 0; i < x.length; i++) if (x[i] !== y[i]) return x[i] < y[i] ? -1 : 1;
    return 0;
  }
  return x < y ? -1 : x > y ? 1 : 0;
}

function cell(row, key) {
  if (key === "name") return el("td", {}, el("a", { href: `/run?name=${encodeURIComponent(row.name)}`, text: row.name }));
  const td = el("td", { text: text(row, key), class: `col-${key}` });
  if (key === "params" && row.params !== null) td.title = `${row.params.toLocaleString("en-US")} weights`;
  return td;
}

function render() {
  const needle = document.getElementById("filter").value.trim().toLowerCase();
  const shown = rows.filter((r) => !needle || SEARCHED.some((k) => text(r, k).toLowerCase().includes(needle)));
  shown.sort((a, b) => compare(sortValue(a, sortKey), sortValue(b, sortKey)) * (ascending ? 1 : -1));
  const head = el("tr", {}, ...COLUMNS.map(({ key, label, title }) => {
    const th = el("th", { text: label, "data-key": key });
    if (title) th.title = title;
    if (key === sortKey) th.className = ascending ? "sorted-asc" : "sorted-desc";
    th.addEventListener("click", () => { ascending = key === sortKey ? !ascending : true; sortKey = key; render(); });
    return th;
  }));
  const body = shown.map((row) => el("tr", { "data-run": row.name }, ...COLUMNS.map(({ key }) => cell(row, key))));
  document.getElementById("runs").replaceChildren(
    el("table", { id: "runs-table" }, el("thead", {}, head), el("tbody", {}, ...body)),
    el("p", { class: "muted", text: `params: ${PARAMS_NOTE}. differs: the config values that differ among the runs of the same kind, task and preset (a sweep's trials, a study's models).` }));
  document.getElementById("summary").textContent = `${shown.length} of ${rows.length} runs`;
}

async function main() {
  try {
    rows = await getJSON("/api/runs");
    render();
  } catch (error) {
    showError(document.getElementById("runs"), error);
  }
  document.getElementById("filter").addEventListener("input", render);
}

main();
