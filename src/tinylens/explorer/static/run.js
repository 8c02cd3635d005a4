// A run's page: its state and config, metric curves, report and figures, and a live probe of its
// model at a chosen checkpoint (prediction, per-position probabilities, attention, the maze).
import { attentionView } from "/static/attention.js";
import { PARAMS_NOTE, el, fmt, getJSON, shapeText, showError, valueText } from "/static/common.js";
import { mazeView } from "/static/maze.js";
import { lineChart } from "/static/plot.js";
import { studyViews } from "/static/views.js";

const name = new URLSearchParams(location.search).get("name") || "";
const api = `/api/runs/${encodeURIComponent(name)}`;
const EXAMPLES = { addition: "12345+67890=", counting: "", seqcont: "", maze: "" };

// Charts: which metric names go on which chart (a run logs loss and accuracy overall, per answer
// position and per group; a decoder run the share of its samples inside ε). A fraction chart is
// linear whatever the log-values box says: accuracy ends at 100%, at the top.
const CHARTS = [
  { title: "loss", test: (n) => n === "train/loss" || n === "eval/loss" },
  { title: "held-out exact match", test: (n) => n === "eval/acc", fraction: true },
  { title: "held-out exact match per answer position", test: (n) => /^eval\/acc\/[AP]\d+$/.test(n), fraction: true },
  { title: "held-out share of samples inside ε", test: (n) => n === "eval/inside" || n.startsWith("eval/inside/"), fraction: true },
  { title: "training loss per answer position", test: (n) => /^train\/loss\/[^/]+$/.test(n) },
  { title: "held-out loss per answer position", test: (n) => /^eval\/loss\/[AP]\d+$/.test(n) },
];

function charts(metrics) {
  const names = Object.keys(metrics);
  return CHARTS.map((chart) => ({ ...chart, series: names.filter(chart.test).map((n) => ({ name: n, ...metrics[n] })) }))
    .filter((chart) => chart.series.length);
}

function drawCurves(metrics) {
  const logX = document.getElementById("log-x").checked;
  const logY = document.getElementById("log-y").checked;
  const shown = charts(metrics).map(({ title, series, fraction = false }) =>
    el("div", { class: "chart", "data-chart": title }, el("h3", { text: title }), lineChart(series, { logX, logY, fraction })));
  document.getElementById("curves").replaceChildren(...(shown.length ? shown : [el("p", { class: "muted", text: "no metrics logged yet" })]));
}

// The runs of this run's kind, task and preset, and the config values that differ among them.
function groupTable(run) {
  const { group } = run;
  if (!group || group.runs.length < 2) return [];
  const what = `the ${group.runs.length} ${group.kind} runs of task ${group.task ?? "-"}, preset ${group.preset ?? "-"}`;
  if (!group.fields.length) return [el("p", { class: "muted", id: "group", text: `${what}: nothing in their config.json differs` })];
  const rows = group.runs.map((r) => el("tr", { "data-run": r.name, class: r.name === run.name ? "current" : "" },
    el("td", {}, r.name === run.name ? r.name : el("a", { href: `/run?name=${encodeURIComponent(r.name)}`, text: r.name })),
    ...group.fields.map((f) => el("td", { text: valueText(r.values[f]) }))));
  return [
    el("h3", { text: `What differs among ${what}` }),
    el("table", { id: "group" }, el("thead", {}, el("tr", {}, el("th", { text: "run" }), ...group.fields.map((f) => el("th", { text: f })))),
      el("tbody", {}, ...rows)),
  ];
}

function overview(run) {
  document.getElementById("title").textContent = run.name;
  const cfg = run.config || {};
  const facts = [["status", run.status], ["step", run.step], ["task", cfg.task ?? "-"], ["preset", cfg.preset ?? "-"]];
  if (run.shape) facts.push(["model", shapeText(run.shape, true)]);
  if (run.params !== null) facts.push(["parameters", `${run.params.toLocaleString("en-US")}: ${PARAMS_NOTE}`]);
  facts.push(["checkpoints", run.checkpoints.join(", ") || "none"]);
  const leftOut = run.left_out.length
    ? [el("p", { class: "muted", id: "left-out", text: `left out (links out of the workspace: not listed, not served): ${run.left_out.join(", ")}` })]
    : [];
  document.getElementById("overview").replaceChildren(
    el("table", { id: "facts" }, el("tbody", {}, ...facts.map(([k, v]) => el("tr", { "data-fact": k }, el("th", { text: k }), el("td", { text: fmt(v) }))))),
    ...groupTable(run),
    ...leftOut,
    el("details", {}, el("summary", { text: "config.json" }), el("pre", { text: JSON.stringify(cfg, null, 2) })));
  const report = document.getElementById("report");
  const parts = [];
  if (run.report) parts.push(el("p", {}, el("a", { href: `/runs/${encodeURIComponent(run.name)}/report`, id: "report-link", text: "open the report" })));
  for (const fig of run.figures) {
    const src = `/runs/${encodeURIComponent(run.name)}/figures/${encodeURIComponent(fig)}.png`;
    parts.push(el("figure", {}, el("img", { src, alt: fig, width: 360 }), el("figcaption", { class: "muted", text: fig })));
  }
  report.replaceChildren(...(parts.length ? parts : [el("p", { class: "muted", text: "no report or figures (a training run has none; a study run does)" })]));
}

function probeForm(run) {
  const where = document.getElementById("probe");
  const task = (run.config || {}).task;
  if (!run.checkpoints.length || !task) {
    where.replaceChildren(el("p", { class: "muted", text: "nothing to probe: this run has no trained model" }));
    return;
  }
  const text = el("input", { type: "text", id: "probe-text", placeholder: `a ${task} question, e.g. ${EXAMPLES[task] || "in the task's text format"}` });
  const seed = el("input", { type: "number", id: "probe-seed", min: 0, value: 0, style: "width:7em" });
  const step = el("select", { id: "probe-step" }, ...run.checkpoints.slice().reverse().map((s) => el("option", { value: s, text: `step ${s}` })));
  const out = el("div", { id: "probe-result" });
  const ask = async (body) => {
    out.replaceChildren(el("p", { class: "muted", text: "asking…" }));
    try {
      const result = await getJSON(`${api}/probe`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ ...body, step: Number(step.value) }) });
      out.replaceChildren(...probeResult(result));
    } catch (error) {
      showError(out, error);
    }
  };
  const askText = el("button", { id: "probe-ask", text: "ask" });
  askText.addEventListener("click", () => ask({ text: text.value }));
  const askSeed = el("button", { id: "probe-draw", text: "draw a question" });
  askSeed.addEventListener("click", () => ask({ seed: Number(seed.value) }));
  text.addEventListener("keydown", (e) => { if (e.key === "Enter") ask({ text: text.value }); });
  where.replaceChildren(
    el("p", {}, text, " ", askText),
    el("p", {}, "or draw one: seed ", seed, " ", askSeed, "  at ", step),
    out);
}

function probeResult(r) {
  const verdict = el("span", { class: r.correct ? "correct" : "wrong", id: "probe-verdict", text: r.correct ? "correct" : "wrong" });
  const rows = r.positions.map((p) => el("tr", {},
    el("td", { text: p.name }), el("td", { text: p.predicted }), el("td", { text: p.true }), el("td", { text: p.p_true.toFixed(4) }),
    el("td", {}, ...p.top.map((t) => el("div", {}, el("span", { class: "bar", style: `width:${Math.round(80 * t.p)}px` }), ` ${t.token} ${t.p.toFixed(3)}`)))));
  const parts = [
    el("p", {}, "model: ", el("code", { id: "probe-answer", text: r.answer }), " — ", verdict),
    el("p", {}, "true:  ", el("code", { text: r.truth })),
    el("table", { id: "probe-positions" },
      el("thead", {}, el("tr", {}, ...["slot", "model", "true", "p(true)", `top ${r.positions[0]?.top.length ?? 0}`].map((h) => el("th", { text: h })))),
      el("tbody", {}, ...rows)),
  ];
  if (r.maze) parts.push(el("h3", { text: "the maze: true path (blue), the model's (orange)" }), mazeView(r.maze));
  parts.push(el("h3", { text: "attention" }), attentionView(r));
  return parts;
}

async function main() {
  try {
    const [run, metrics] = await Promise.all([getJSON(api), getJSON(`${api}/metrics`)]);
    overview(run);
    drawCurves(metrics);
    for (const id of ["log-x", "log-y"]) document.getElementById(id).addEventListener("change", () => drawCurves(metrics));
    probeForm(run);
    const views = await getJSON(`${api}/views`);
    if (views.length) {
      document.getElementById("views").replaceChildren(...studyViews(views));
      document.getElementById("views-section").hidden = false;
    }
  } catch (error) {
    showError(document.getElementById("overview"), error);
  }
}

main();
