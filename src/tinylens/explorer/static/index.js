// The start page: every run of the workspace in a table that filters as you type and sorts by
// any column (click its header; again to reverse). A run's name links to its page.
import { el, fmt, getJSON, showError } from "/static/common.js";

const COLUMNS = [
  ["name", "run"], ["kind", "kind"], ["task", "task"], ["preset", "preset"], ["status", "status"],
  ["step", "steps"], ["acc", "held-out exact"], ["created", "created"],
];
let rows = [];
let sortKey = "created";
let ascending = false;

function cell(row, key) {
  if (key === "name") return el("td", {}, el("a", { href: `/run?name=${encodeURIComponent(row.name)}`, text: row.name }));
  if (key === "acc") return el("td", { text: row.acc === null ? "-" : `${(100 * row.acc).toFixed(2)}%` });
  if (key === "created") return el("td", { text: new Date(row.created * 1000).toLocaleString() });
  return el("td", { text: fmt(row[key]) });
}

function render() {
  const needle = document.getElementById("filter").value.trim().toLowerCase();
  const shown = rows.filter((r) =>
    !needle || ["name", "task", "preset", "kind", "status"].some((k) => String(r[k] ?? "").toLowerCase().includes(needle)));
  shown.sort((a, b) => {
    const x = a[sortKey] ?? -Infinity, y = b[sortKey] ?? -Infinity;
    return (x < y ? -1 : x > y ? 1 : 0) * (ascending ? 1 : -1);
  });
  const head = el("tr", {}, ...COLUMNS.map(([key, label]) => {
    const th = el("th", { text: label, "data-key": key });
    if (key === sortKey) th.className = ascending ? "sorted-asc" : "sorted-desc";
    th.addEventListener("click", () => { ascending = key === sortKey ? !ascending : true; sortKey = key; render(); });
    return th;
  }));
  const body = shown.map((row) => el("tr", { "data-run": row.name }, ...COLUMNS.map(([key]) => cell(row, key))));
  document.getElementById("runs").replaceChildren(el("table", { id: "runs-table" }, el("thead", {}, head), el("tbody", {}, ...body)));
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
