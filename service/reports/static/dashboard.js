// NAMM cost dashboard: reads /v1/reports/cost with the key kept in sessionStorage and draws
// four charts over the period (one point per day) and a table per model and per policy.
// The Chart instances are left on window.nammCharts (the browser test reads them).
"use strict";

const KEY = "namm_api_key";
const STATUSES = ["queued", "running", "done", "failed", "cancelled"];
const COLORS = { run: "#1f77b4", full: "#ff7f0e", a: "#2ca02c", b: "#9467bd",
  queued: "#7f7f7f", running: "#17becf", done: "#2ca02c", failed: "#d62728", cancelled: "#bcbd22" };
window.nammCharts = {};

const $ = (id) => document.getElementById(id);
const usd = (micro) => (micro / 1e6).toFixed(micro !== 0 && Math.abs(micro) < 10000 ? 6 : 2);
const big = (n) => Number(n).toLocaleString("en-US", { maximumFractionDigits: 0 });

function isoDay(d) {
  return d.toISOString().slice(0, 10);
}

async function api(path) {
  const response = await fetch(path, { headers: { "X-API-Key": sessionStorage.getItem(KEY) || "" } });
  if (response.status === 401) {
    signOut("The key was refused (missing, wrong or revoked).");
    throw new Error("unauthorised");
  }
  const body = await response.json();
  if (!response.ok) throw new Error(body.detail || response.statusText);
  return body;
}

function signOut(message) {
  sessionStorage.removeItem(KEY);
  $("app").hidden = true;
  $("logout").hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = message || "";
}

function query(groupBy) {
  const p = new URLSearchParams({ from: $("from").value, to: $("to").value, tz: $("tz").value,
    group_by: groupBy });
  if (groupBy === "day") p.set("with_status", "true");
  return "/v1/reports/cost?" + p.toString();
}

// Up to this many days the series are bars: one or a few points on a line read as a flat line
// stuck to the axis (a new tenant's first day); a month reads better as lines.
const BAR_DAYS = 7;

function chart(id, type, labels, datasets, options) {
  if (window.nammCharts[id]) window.nammCharts[id].destroy();
  window.nammCharts[id] = new Chart($("chart-" + id), {
    type, data: { labels, datasets },
    // offset: the first and last day sit half a step in from the edges, never on the axis
    options: Object.assign({ animation: false, responsive: true, interaction: { mode: "index", intersect: false },
      scales: { x: { offset: true }, y: { beginAtZero: true } } }, options || {}),
  });
}

function line(label, data, color, extra) {
  // visible markers: a day with a value is a dot even where no line joins it to a neighbour
  return Object.assign({ label, data, borderColor: color, backgroundColor: color, tension: 0.2,
    pointRadius: 4, pointHoverRadius: 6 }, extra || {});
}

function drawCharts(report) {
  const days = report.groups.map((g) => g.key);
  const g = report.groups;
  const type = days.length <= BAR_DAYS ? "bar" : "line";
  chart("kv", type, days, [
    line("kept (this service)", g.map((x) => x.kv_token_steps), COLORS.run),
    line("full cache", g.map((x) => x.kv_token_steps_full), COLORS.full),
  ]);
  const estimated = report.totals.saved_estimated;
  $("cost-caption").textContent = "Cost vs full cache (USD)" + (estimated ? ", full cache estimated" : "");
  // the full cache's figure exists only for jobs with a counterfactual: compare it with the cost
  // of those jobs (no point where a day has none), and show the cost of every job beside them
  const withCf = (x, value) => (x.jobs_with_counterfactual > 0 ? value / 1e6 : null);
  // "cost" (jobs with a full-cache figure) often equals "cost, all jobs": drawn last would hide
  // it, so "cost, all jobs" is a wide pale band drawn under (order 2) and "cost" a thin line on top
  chart("cost", type, days, [
    line("cost, all jobs", g.map((x) => x.cost_micro_usd / 1e6), COLORS.b,
      { order: 2, borderWidth: 8, borderColor: COLORS.b + "66", backgroundColor: COLORS.b + "99", pointRadius: 7 }),
    line("cost", g.map((x) => withCf(x, x.cost_with_counterfactual_micro_usd)), COLORS.run, { order: 0 }),
    line("full cache" + (estimated ? " (estimated)" : ""), g.map((x) => withCf(x, x.full_cache_cost_micro_usd)),
      COLORS.full, { order: 1, borderDash: estimated ? [6, 4] : [] }),
  ]);
  chart("tokens", "bar", days, [
    line("tokens in", g.map((x) => x.tokens_in), COLORS.a),
    line("tokens out", g.map((x) => x.tokens_out), COLORS.b),
  ], { scales: { x: { stacked: true }, y: { stacked: true, beginAtZero: true } } });
  const status = report.jobs_by_status || [];
  chart("status", "bar", status.map((s) => s.day),
    STATUSES.map((name) => line(name, status.map((s) => s[name] || 0), COLORS[name])),
    { scales: { x: { stacked: true }, y: { stacked: true, beginAtZero: true } } });
}

function cell(row, text, cls) {
  const td = document.createElement(row.parentElement && row.parentElement.tagName === "THEAD" ? "th" : "td");
  td.textContent = text;
  if (cls) td.className = cls;
  row.appendChild(td);
}

function drawTable(id, report) {
  const table = $(id);
  table.replaceChildren();
  const head = table.createTHead().insertRow();
  ["", "jobs", "tokens in", "tokens out", "KV token-steps kept", "of full", "cost USD",
    "full cache USD", "saved USD"].forEach((h) => {
    const th = document.createElement("th");
    th.textContent = h;
    head.appendChild(th);
  });
  const body = table.createTBody();
  for (const g of [...report.groups, Object.assign({ key: "total" }, report.totals)]) {
    const row = body.insertRow();
    const share = g.kv_token_steps_full > 0 ? (100 * g.kv_token_steps / g.kv_token_steps_full).toFixed(1) + "%" : "-";
    const hasCf = g.jobs_with_counterfactual > 0;
    const saved = hasCf ? usd(g.saved_micro_usd) + (g.saved_estimated ? " (estimated)" : "") : "-";
    [g.key, big(g.jobs), big(g.tokens_in), big(g.tokens_out), big(g.kv_token_steps), share,
      usd(g.cost_micro_usd), hasCf ? usd(g.full_cache_cost_micro_usd) : "-"].forEach((t) => cell(row, t));
    cell(row, saved, hasCf && g.saved_micro_usd < 0 ? "loss" : "");
  }
}

function drawSummary(totals, shadow) {
  const s = $("summary");
  s.replaceChildren();
  const items = [
    ["jobs", big(totals.jobs)],
    ["cost", "$" + usd(totals.cost_micro_usd)],
    ["saved" + (totals.saved_estimated ? " (estimated)" : ""),
      totals.jobs_with_counterfactual ? "$" + usd(totals.saved_micro_usd) : "-"],
    ["KV token-steps saved", big(totals.kv_token_steps_saved)],
  ];
  if (totals.questions_from_memories > 0) {  // stored documents: reuse, apart from eviction
    items.push(["saved by not re-reading (stored documents)", "$" + usd(totals.reuse_saved_micro_usd)]);
    items.push([`tokens not re-read, ${big(totals.questions_from_memories)} question(s) from stored memories`,
      big(totals.tokens_not_reread)]);
  }
  if (shadow && shadow.done > 0) {  // full-cache reruns: measured, shown apart from estimates
    items.push([`saved, measured on ${shadow.done} full-cache rerun(s)`, "$" + usd(shadow.saved_micro_usd)]);
    items.push(["reruns with the same answer", `${shadow.answers_agree} of ${shadow.done}`]);
    items.push(["seconds: this service vs full cache (measured)",
      `${shadow.seconds_run.toFixed(1)} vs ${shadow.seconds_full.toFixed(1)}`]);
  }
  for (const [label, value] of items) {
    const d = document.createElement("div");
    const strong = document.createElement("strong");
    strong.textContent = value;
    d.append(strong, label);
    s.appendChild(d);
  }
}

async function load() {
  $("status").textContent = "loading…";
  try {
    const [byDay, byModel, byPolicy] = await Promise.all(
      ["day", "model", "policy"].map((groupBy) => api(query(groupBy))));
    drawSummary(byDay.totals, byDay.shadow);
    drawCharts(byDay);
    drawTable("table-model", byModel);
    drawTable("table-policy", byPolicy);
    $("status").textContent = `${byDay.totals.jobs} jobs, ${byDay.groups.length} days`;
    document.body.dataset.loaded = "true";
  } catch (err) {
    $("status").textContent = err.message;
  }
}

function show() {
  $("login").hidden = true;
  $("app").hidden = false;
  $("logout").hidden = false;
  load();
}

document.addEventListener("DOMContentLoaded", () => {
  const params = new URLSearchParams(location.search);
  const today = new Date();
  $("to").value = params.get("to") || isoDay(today);
  $("from").value = params.get("from") || isoDay(new Date(today.getTime() - 29 * 86400000));
  $("tz").value = params.get("tz") || Intl.DateTimeFormat().resolvedOptions().timeZone || "UTC";
  $("login").addEventListener("submit", (e) => {
    e.preventDefault();
    sessionStorage.setItem(KEY, $("api-key").value.trim());
    $("api-key").value = "";
    show();
  });
  $("filters").addEventListener("submit", (e) => { e.preventDefault(); load(); });
  $("logout").addEventListener("click", () => signOut(""));
  if (sessionStorage.getItem(KEY)) show();
});
