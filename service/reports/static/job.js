// One job on the dashboard: its status, answers and usage, and its document as the memory kept
// it (GET /v1/jobs/{id}/retention, for jobs asked with retention: true): each token faded by
// the share of layers and KV heads that forgot it, as namm.retention.render_html draws it.
// Text goes in with textContent only (a document is never markup).
"use strict";

const KEY = "namm_api_key";
const FADED = 0.25;  // opacity of a token no head kept (namm/retention.py FADED)
const $ = (id) => document.getElementById(id);

function opacity(share) { return FADED + share * (1 - FADED); }

function colour(share) {  // kept text dark, forgotten text red-grey (namm/retention.py _colour)
  const mix = (a, b) => Math.round(a + (b - a) * share).toString(16).padStart(2, "0");
  return "#" + mix(170, 17) + mix(68, 17) + mix(68, 17);
}

function paint(span, share) {
  span.style.opacity = opacity(share).toFixed(3);
  span.style.color = colour(share);
}

async function api(path) {
  const response = await fetch(path, { headers: { "X-API-Key": sessionStorage.getItem(KEY) || "" } });
  const body = await response.json().catch(() => ({}));
  if (response.status === 401) {
    sessionStorage.removeItem(KEY);
    $("login").hidden = false;
    throw new Error("The key was refused (missing, wrong or revoked).");
  }
  if (!response.ok) throw new Error(body.detail || response.statusText);
  return body;
}

function drawJob(job) {
  const rows = [["status", job.status], ["kind", job.kind], ["policy", job.policy]];
  if (job.usage) {
    rows.push(["tokens in / out", `${job.usage.tokens_in} / ${job.usage.tokens_out}`]);
    rows.push(["KV kept", (100 * job.usage.kv_kept_fraction).toFixed(1) + "%"]);
  }
  if (job.error) rows.push(["error", job.error]);
  const box = $("job-summary");
  box.replaceChildren();
  for (const [label, value] of rows) {
    const d = document.createElement("div");
    const strong = document.createElement("strong");
    strong.textContent = value;
    d.append(strong, label);
    box.appendChild(d);
  }
  const answers = $("answers");
  answers.replaceChildren();
  for (const [i, text] of ((job.result && job.result.answers) || []).entries()) {
    const li = document.createElement("li");
    li.textContent = (job.questions[i] ? job.questions[i] + " — " : "") + text;
    answers.appendChild(li);
  }
}

function drawRetention(map) {
  const doc = $("document");
  doc.replaceChildren();
  let last = null;
  for (const [text, share] of map.pieces) {  // neighbours with one share are one span
    if (!text) continue;
    if (last && last.dataset.share === String(share)) {
      last.textContent += text;
      continue;
    }
    last = document.createElement("span");
    last.dataset.share = String(share);
    last.title = `kept by ${Math.round(share * 100)}% of layers and heads`;
    last.textContent = text;
    paint(last, share);
    doc.appendChild(last);
  }
  $("retention-summary").textContent =
    `${map.tokens} document tokens; ${(100 * map.mean_share).toFixed(1)}% of (token, layer, head) entries kept (policy ${map.policy}).`;
}

async function load() {
  const jobId = decodeURIComponent(location.pathname.split("/").pop());
  $("job-id").textContent = jobId;
  $("error").textContent = "";
  try {
    const job = await api(`/v1/jobs/${encodeURIComponent(jobId)}`);
    $("login").hidden = true;
    $("app").hidden = false;
    drawJob(job);
    if (job.retention) {
      drawRetention(await api(job.retention));
    } else {
      $("retention-summary").textContent = job.status === "done"
        ? "No retention map: submit the job with \"retention\": true to keep one."
        : "The map appears once the job is done (if it was asked with \"retention\": true).";
    }
  } catch (err) {
    $("error").textContent = err.message;
  }
}

for (const span of document.querySelectorAll(".legend span")) paint(span, Number(span.dataset.share));
$("login").addEventListener("submit", (event) => {
  event.preventDefault();
  sessionStorage.setItem(KEY, $("api-key").value.trim());
  load();
});
if (sessionStorage.getItem(KEY)) load(); else $("login").hidden = false;
