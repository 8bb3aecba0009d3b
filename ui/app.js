// capstan's web UI: one ES module, no build step. Routes are real paths (History API); the
// server answers index.html for each of them, so deep links and the back button work.
import { drawDag } from "/assets/dag.js";
import { lineChart } from "/assets/chart.js";

const main = document.getElementById("main");
const live = document.getElementById("live");
let cleanup = [];

// ---------- helpers ----------
export function esc(v) {
  return String(v ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
}
const h = (strings, ...vals) => strings.reduce((out, s, i) => out + s + (i < vals.length ? (vals[i] && vals[i].__html !== undefined ? vals[i].__html : esc(vals[i])) : ""), "");
const raw = (html) => ({ __html: html });
const time = (ms) => (ms ? new Date(Number(ms)).toLocaleString() : "");
const dur = (a, b) => {
  if (!a) return "";
  const s = ((b || Date.now()) - a) / 1000;
  return s < 60 ? `${s.toFixed(1)}s` : s < 3600 ? `${Math.floor(s / 60)}m ${Math.round(s % 60)}s` : `${(s / 3600).toFixed(1)}h`;
};
const badge = (s) => raw(`<span class="badge ${esc(s)}">${esc(s)}</span>`);
const short = (id) => String(id || "").slice(0, 8);
const size = (n) => (n < 1024 ? `${n} B` : n < 1 << 20 ? `${(n / 1024).toFixed(1)} KiB` : `${(n / (1 << 20)).toFixed(1)} MiB`);

async function api(path, opts) {
  const res = await fetch(path, opts);
  const text = await res.text();
  let body;
  try { body = text ? JSON.parse(text) : {}; } catch { body = { error: text }; }
  if (!res.ok) throw new Error(body.error || body.message || `${res.status} ${res.statusText}`);
  return body;
}
const mlflow = (path, body) => api(`/ajax-api/2.0/mlflow/${path}`, body ? { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) } : undefined);

function onCleanup(fn) { cleanup.push(fn); }
function stream(url, handlers) {
  const es = new EventSource(url);
  for (const [ev, fn] of Object.entries(handlers)) es.addEventListener(ev, (e) => fn(JSON.parse(e.data)));
  es.onerror = () => { if (es.readyState === EventSource.CLOSED) live.textContent = ""; };
  onCleanup(() => es.close());
  return es;
}

// ---------- routing ----------
const routes = [
  [/^\/$/, home, "home"],
  [/^\/runs$/, runsList, "runs"],
  [/^\/runs\/([^/]+)$/, runDetail, "runs"],
  [/^\/artifacts\/([^/]+)$/, artifactPage, "runs"],
  [/^\/lineage\/([^/]+)$/, lineagePage, "runs"],
  [/^\/experiments$/, experiments, "experiments"],
  [/^\/compare$/, compare, "compare"],
  [/^\/models$/, models, "models"],
  [/^\/models\/(.+)$/, modelPage, "models"],
];

export function navigate(url, replace = false) {
  if (replace) history.replaceState(null, "", url); else history.pushState(null, "", url);
  render();
}
/** Updates the query string without a new history entry or re-render. */
function setQuery(params) {
  const u = new URL(location.href);
  for (const [k, v] of Object.entries(params)) { if (v === "" || v == null) u.searchParams.delete(k); else u.searchParams.set(k, v); }
  history.replaceState(null, "", u);
}

async function render() {
  cleanup.forEach((f) => f());
  cleanup = [];
  live.textContent = "";
  delete main.dataset.renderMs;
  delete main.dataset.points;
  const path = decodeURIComponent(location.pathname);
  const q = new URLSearchParams(location.search);
  for (const [re, page, nav] of routes) {
    const m = path.match(re);
    if (!m) continue;
    document.querySelectorAll("[data-nav]").forEach((a) => a.classList.toggle("active", a.dataset.nav === nav));
    try {
      await page(q, ...m.slice(1));
    } catch (err) {
      main.innerHTML = h`<div class="error" role="alert">${err.message}</div>`;
    }
    return;
  }
  main.innerHTML = h`<h1>Not found</h1><p>No page at ${path}. <a href="/" data-link>Home</a></p>`;
}

document.addEventListener("click", (e) => {
  const a = e.target.closest("a[data-link], a[href^='/']");
  if (!a || e.ctrlKey || e.metaKey || e.shiftKey || a.target || a.hasAttribute("download")) return;
  const href = a.getAttribute("href");
  if (href.startsWith("/api/") || href.startsWith("/ajax-api/")) return;
  e.preventDefault();
  navigate(href);
});
window.addEventListener("popstate", render);
document.addEventListener("keydown", (e) => {
  if (e.key === "/" && !/INPUT|TEXTAREA|SELECT/.test(document.activeElement.tagName)) {
    const f = main.querySelector("input[type=search], input[data-focus]");
    if (f) { e.preventDefault(); f.focus(); }
  }
});

// ---------- run tables ----------
function runsTable(runs, empty = "No runs.") {
  if (!runs.length) return `<p class="muted">${esc(empty)}</p>`;
  return h`<table><thead><tr><th>Run</th><th>Pipeline</th><th>Status</th><th>Created</th><th>Duration</th></tr></thead><tbody>${raw(
    runs.map((r) => h`<tr><td><a class="mono" href="/runs/${r.id}" data-link>${short(r.id)}</a></td><td><a href="/runs?pipeline=${encodeURIComponent(r.pipeline)}" data-link>${r.pipeline}</a></td><td>${badge(r.status)}</td><td>${time(r.created_at)}</td><td>${dur(r.started_at, r.ended_at)}</td></tr>`).join(""))}</tbody></table>`;
}

async function home() {
  const d = await api("/api/v1/home");
  const c = d.counts;
  const total = Object.values(c.runs_by_status).reduce((a, b) => a + b, 0);
  const count = (label, n, href) => h`<a class="count" href="${href}" data-link><b>${n}</b>${label}</a>`;
  main.innerHTML = h`<h1>Overview</h1>
  <div class="counts">${raw([
    count("runs", total, "/runs"),
    ...["running", "succeeded", "failed"].map((s) => count(s, c.runs_by_status[s] || 0, `/runs?status=${s}`)),
    count("pipelines", c.pipelines, "/runs"),
    count("artifacts", c.artifacts, "/runs"),
    count("experiments", c.experiments, "/experiments"),
    count("models", c.registered_models, "/models"),
  ].join(""))}</div>
  <div class="grid">
    <section class="card"><h2>Running now</h2>${raw(runsTable(d.running, "Nothing is running."))}</section>
    <section class="card"><h2>Recent failures</h2>${raw(runsTable(d.failed, "No failures."))}</section>
  </div>
  <section class="card"><h2>Recent runs</h2>${raw(runsTable(d.recent, "No runs yet: capstan run examples/quickstart/pipeline.yaml"))}</section>`;
}

async function runsList(q) {
  const limit = 50;
  const state = {
    pipeline: q.get("pipeline") || "", status: q.get("status") || "", sort: q.get("sort") || "created",
    order: q.get("order") || "desc", since: q.get("since") || "", offset: Number(q.get("offset") || 0),
  };
  main.innerHTML = h`<h1>Pipeline runs</h1>
  <form class="filters" id="f">
    <label>Pipeline<input name="pipeline" type="search" value="${state.pipeline}" placeholder="name" data-focus></label>
    <label>Status<select name="status">${raw(["", "pending", "running", "succeeded", "failed", "cancelled"].map((s) => `<option ${s === state.status ? "selected" : ""} value="${s}">${s || "any"}</option>`).join(""))}</select></label>
    <label>Created<select name="since">${raw([["", "any time"], ["3600000", "last hour"], ["86400000", "last day"], ["604800000", "last week"]].map(([v, l]) => `<option ${v === state.since ? "selected" : ""} value="${v}">${l}</option>`).join(""))}</select></label>
    <button class="primary">Filter</button>
  </form>
  <div id="table"></div>`;
  const form = main.querySelector("#f");
  const load = async () => {
    const p = new URLSearchParams({ sort: state.sort, order: state.order, limit, offset: state.offset });
    if (state.pipeline) p.set("pipeline", state.pipeline);
    if (state.status) p.set("status", state.status);
    if (state.since) p.set("after", Date.now() - Number(state.since));
    const t0 = performance.now();
    const d = await api(`/api/v1/runs?${p}`);
    const col = (key, label) => h`<th aria-sort="${state.sort === key ? (state.order === "asc" ? "ascending" : "descending") : "none"}"><button data-sort="${key}">${label}${state.sort === key ? (state.order === "asc" ? " ▲" : " ▼") : ""}</button></th>`;
    main.querySelector("#table").innerHTML = h`<div class="scroll"><table id="runs"><thead><tr><th>Run</th>${raw(col("pipeline", "Pipeline") + col("status", "Status") + col("created", "Created") + col("started", "Started") + col("duration", "Duration"))}<th>Params</th></tr></thead><tbody>${raw(
      d.runs.map((r) => h`<tr><td><a class="mono" href="/runs/${r.id}" data-link>${short(r.id)}</a></td><td>${r.pipeline}</td><td>${badge(r.status)}</td><td>${time(r.created_at)}</td><td>${time(r.started_at)}</td><td>${dur(r.started_at, r.ended_at)}</td><td class="mono muted">${JSON.stringify(r.params).slice(0, 80)}</td></tr>`).join(""))}</tbody></table></div>
    <div class="pager"><button id="prev" ${state.offset ? "" : "disabled"}>← Newer</button><span>${d.total ? state.offset + 1 : 0}–${state.offset + d.runs.length} of ${d.total}</span><button id="next" ${state.offset + limit < d.total ? "" : "disabled"}>Older →</button></div>`;
    main.dataset.renderMs = (performance.now() - t0).toFixed(1);
    main.querySelectorAll("[data-sort]").forEach((b) => b.addEventListener("click", () => {
      const key = b.dataset.sort;
      state.order = state.sort === key && state.order === "desc" ? "asc" : "desc";
      state.sort = key; state.offset = 0; sync(); load();
    }));
    main.querySelector("#prev").onclick = () => { state.offset = Math.max(0, state.offset - limit); sync(); load(); };
    main.querySelector("#next").onclick = () => { state.offset += limit; sync(); load(); };
  };
  const sync = () => setQuery({ pipeline: state.pipeline, status: state.status, since: state.since, sort: state.sort === "created" ? "" : state.sort, order: state.order === "desc" ? "" : state.order, offset: state.offset || "" });
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    const f = new FormData(form);
    state.pipeline = f.get("pipeline"); state.status = f.get("status"); state.since = f.get("since"); state.offset = 0;
    sync(); load();
  });
  await load();
}

// ---------- run detail ----------
async function runDetail(q, id) {
  let detail;
  try {
    detail = await api(`/api/v1/runs/${encodeURIComponent(id)}`);
  } catch (err) {
    // Not a pipeline run: a tracking run (a task's nested run, or a run the mlflow client made).
    return trackingRunPage(id, err);
  }
  let selected = q.get("task") ? { task: q.get("task") } : null;
  main.innerHTML = `<div id="head"></div><div class="split"><div><svg class="dag" id="dag" role="group" aria-label="pipeline graph"></svg><div id="info"></div></div><div id="panel"></div></div>`;
  const head = main.querySelector("#head");
  const paint = () => {
    const r = detail.run;
    head.innerHTML = h`<h1>${r.pipeline} <span class="mono muted">${r.id}</span> <span id="run-status">${badge(r.status)}</span></h1>
      <p class="muted">created ${time(r.created_at)} · duration ${dur(r.started_at, r.ended_at)} · source ${r.source || "—"}${r.message ? raw(` · <span>${esc(r.message)}</span>`) : ""}</p>`;
    drawDag(main.querySelector("#dag"), detail.dag.nodes.map((n) => ({ id: n.id, label: n.tasks.length > 1 ? `${n.id} ×${n.tasks.length}` : n.id, status: n.status })), detail.dag.edges, {
      selected: selected && (detail.tasks.find((t) => t.name === selected.task)?.step || selected.step),
      onSelect: (step) => {
        const n = detail.dag.nodes.find((x) => x.id === step);
        selected = { step, task: n.tasks[0] || null };
        setQuery({ task: selected.task || "" });
        paint();
      },
    });
    main.querySelector("#info").innerHTML = runInfo(detail);
    panel();
  };
  let panelKey = "";
  const panel = () => {
    const el = main.querySelector("#panel");
    if (!selected) { el.innerHTML = `<div class="card muted">Select a step in the graph (Tab to a step, Enter to open) to see its inputs, outputs, attempts, cache and log.</div>`; panelKey = ""; return; }
    const task = detail.tasks.find((t) => t.name === selected.task);
    const step = selected.step || task?.step;
    const node = detail.dag.nodes.find((n) => n.id === step);
    const key = JSON.stringify([task, node?.tasks]);
    if (key === panelKey) return;
    panelKey = key;
    taskPanel(el, detail, node, task, (name) => { selected = { step, task: name }; setQuery({ task: name }); panel(); });
  };
  paint();
  if (!["succeeded", "failed", "cancelled"].includes(detail.run.status)) {
    live.textContent = "● live";
    stream(`/api/v1/runs/${detail.run.id}/events`, {
      run: (d) => { detail = d; paint(); if (["succeeded", "failed", "cancelled"].includes(d.run.status)) live.textContent = ""; },
    });
  }
}

function kvTable(entries) {
  if (!entries.length) return `<p class="muted">none</p>`;
  return `<dl class="kv">${entries.map(([k, v]) => h`<dt>${k}</dt><dd class="mono">${typeof v === "object" && v && v.__html !== undefined ? v : typeof v === "string" ? v : JSON.stringify(v)}</dd>`).join("")}</dl>`;
}

function runInfo(d) {
  const metrics = d.tracking.metrics.map((m) => [m.key, m.value]);
  return h`<div class="grid">
    <section class="card"><h2>Parameters</h2>${raw(kvTable(Object.entries(d.run.params || {})))}</section>
    <section class="card"><h2>Metrics</h2>${raw(kvTable(metrics))}</section>
  </div>
  <section class="card"><h2>Artifacts</h2>${raw(d.artifacts.length ? h`<table><thead><tr><th>Name</th><th>Type</th><th>Size</th><th>Digest</th><th></th></tr></thead><tbody>${raw(d.artifacts.map((a) => h`<tr><td><a href="/artifacts/${a.id}" data-link>${a.name}</a></td><td>${a.type_name}</td><td>${size(a.size)}</td><td class="mono">${a.digest.slice(7, 19)}</td><td><a href="/lineage/${a.id}" data-link>lineage</a></td></tr>`).join(""))}</tbody></table>` : `<p class="muted">none</p>`)}</section>`;
}

function artifactLinks(map) {
  return Object.entries(map || {}).map(([k, a]) => [k, raw(h`<a href="/artifacts/${a.id}" data-link>${a.digest.slice(7, 19)}</a> · <a href="/lineage/${a.id}" data-link>lineage</a>`)]);
}

function taskPanel(el, detail, node, task, choose) {
  const tabs = (node?.tasks || []).length > 1 ? `<div class="tabs" role="group" aria-label="tasks of this step">${node.tasks.map((n) => h`<button data-task="${n}" aria-pressed="${task && task.name === n}">${n}</button>`).join("")}</div>` : "";
  if (!task) {
    el.innerHTML = h`<div class="card"><h2>${node ? node.id : ""}</h2>${raw(tabs)}<p class="muted">This step has not started.</p></div>`;
    el.querySelectorAll("[data-task]").forEach((b) => (b.onclick = () => choose(b.dataset.task)));
    return;
  }
  const cache = task.status === "cached" ? raw(h`hit (from task <span class="mono">${short(task.cached_from)}</span>)`) : task.cache_key ? "miss" : "off";
  el.innerHTML = h`<div class="card" id="task-panel"><h2>${task.name} ${badge(task.status)}</h2>${raw(tabs)}
    ${raw(kvTable([
      ["attempts", String(task.attempts)], ["exit code", task.exit_code == null ? "—" : String(task.exit_code)],
      ["cache", cache], ["cache key", task.cache_key || "—"], ["executor", task.executor || "—"],
      ["resources", task.resources], ["started", time(task.started_at)], ["duration", dur(task.started_at, task.ended_at)],
      ...(task.message ? [["message", task.message]] : []),
    ]))}
    <h3>Inputs</h3>${raw(kvTable([...Object.entries(task.inputs.parameters), ...artifactLinks(task.inputs.artifacts)]))}
    <h3>Outputs</h3>${raw(kvTable([...Object.entries(task.outputs.parameters), ...artifactLinks(task.outputs.artifacts)]))}
    <h3>Log</h3>
    <div class="toolbar"><label>Attempt <select id="attempt">${raw(Array.from({ length: Math.max(1, task.attempts) }, (_, i) => `<option ${i + 1 === task.attempts ? "selected" : ""}>${i + 1}</option>`).join(""))}</select></label>
    <input type="search" id="log-search" placeholder="search the log" aria-label="search the log">
    <span id="log-count" class="muted"></span></div>
    <pre class="log" id="log" tabindex="0" aria-label="log"></pre></div>`;
  el.querySelectorAll("[data-task]").forEach((b) => (b.onclick = () => choose(b.dataset.task)));
  const logEl = el.querySelector("#log");
  const search = el.querySelector("#log-search");
  let text = "";
  let es = null;
  const show = () => {
    const needle = search.value;
    if (!needle) { logEl.textContent = text || "(no output yet)"; el.querySelector("#log-count").textContent = ""; }
    else {
      const lines = text.split("\n").filter((l) => l.toLowerCase().includes(needle.toLowerCase()));
      const re = new RegExp(needle.replace(/[.*+?^${}()|[\]\\]/g, "\\$&"), "gi");
      logEl.innerHTML = lines.map((l) => esc(l).replace(re, (m) => `<mark>${m}</mark>`)).join("\n");
      el.querySelector("#log-count").textContent = `${lines.length} matching lines`;
    }
    logEl.scrollTop = logEl.scrollHeight;
  };
  const open = (attempt) => {
    if (es) es.close();
    text = "";
    show();
    es = new EventSource(`/api/v1/runs/${task.run_id}/log/stream?task=${encodeURIComponent(task.name)}&attempt=${attempt}`);
    es.addEventListener("log", (e) => { text += JSON.parse(e.data).text; show(); });
    es.addEventListener("end", () => { es.close(); logEl.dataset.complete = "1"; });
    onCleanup(() => es.close());
  };
  search.addEventListener("input", show);
  el.querySelector("#attempt").onchange = (e) => open(e.target.value);
  open(task.attempts || 1);
}

async function trackingRunPage(id, original) {
  let d;
  try { d = await mlflow(`runs/get?run_id=${encodeURIComponent(id)}`); } catch { throw original; }
  const r = d.run;
  // A task's run points at its pipeline run, whose page has the graph, artifacts and lineage.
  const parent = (r.data.tags || []).find((t) => t.key === "mlflow.parentRunId");
  main.innerHTML = h`<h1>${r.info.run_name || r.info.run_id} ${badge(r.info.status)}</h1>
  <p class="muted">tracking run <span class="mono">${r.info.run_id}</span> · experiment <a href="/experiments?exp=${r.info.experiment_id}" data-link>${r.info.experiment_id}</a> · started ${time(r.info.start_time)}${parent ? raw(h` · step of pipeline run <a id="parent-run" href="/runs/${parent.value}" data-link>${short(parent.value)}</a>`) : ""}</p>
  <div class="grid"><section class="card"><h2>Parameters</h2>${raw(kvTable((r.data.params || []).map((p) => [p.key, p.value])))}</section>
  <section class="card"><h2>Metrics</h2>${raw(kvTable((r.data.metrics || []).map((m) => [m.key, m.value])))}</section>
  <section class="card"><h2>Tags</h2>${raw(kvTable((r.data.tags || []).filter((t) => !t.key.startsWith("mlflow.log-model")).map((t) => [t.key, t.value])))}</section></div>
  <p><a href="/compare?runs=${r.info.run_id}" data-link>Chart this run's metrics</a></p>`;
}

// ---------- artifacts ----------
async function artifactPage(q, id) {
  const d = await api(`/api/v1/artifacts/${encodeURIComponent(id)}`);
  const a = d.artifact;
  const path = q.get("path") || "";
  const content = `/api/v1/artifacts/${a.id}/content${path ? `?path=${encodeURIComponent(path)}` : ""}`;
  const taskLink = (t) => raw(h`<a href="/runs/${t.run_id}?task=${encodeURIComponent(t.name)}" data-link>${t.name}</a> <span class="muted">(${t.as}, run ${short(t.run_id)})</span>`);
  main.innerHTML = h`<h1>${a.name} <span class="muted">${a.type_name}</span></h1>
  <div class="grid"><section class="card">${raw(kvTable([
    ["id", a.id], ["digest", a.digest], ["size", size(a.size)], ["uri", a.uri], ["directory", String(a.is_dir)],
    ["created", time(a.created_at)], ["run", raw(h`<a href="/runs/${a.run_id}" data-link>${a.run_id}</a>`)],
    ["producer", d.producer ? taskLink(d.producer) : "—"],
    ["consumers", d.consumers.length ? raw(d.consumers.map((c) => taskLink(c).__html).join("<br>")) : "none"],
  ]))}
  <p>${a.is_dir && !path ? "" : raw(h`<a href="${content}${path ? "&" : "?"}download=true" download>Download</a> · `)}<a href="/lineage/${a.id}" data-link>Lineage</a></p></section>
  <section class="card"><h2>Metadata</h2>${raw(kvTable(Object.entries(a.metadata || {})))}</section></div>
  <section class="card"><h2>Preview${path ? `: ${esc(path)}` : ""}</h2><div id="preview"></div></section>`;
  const p = await api(`/api/v1/artifacts/${a.id}/preview${path ? `?path=${encodeURIComponent(path)}` : ""}`);
  main.querySelector("#preview").innerHTML = preview(p, a, content);
  const roc = main.querySelector("canvas.roc");
  if (roc) drawRoc(roc, (a.metadata || {}).confidenceMetrics || []);
}

function preview(p, a, content) {
  const more = p.truncated ? `<p class="muted">Showing the first 256 KiB.</p>` : "";
  switch (p.kind) {
    case "directory":
      return `<table><thead><tr><th>File</th><th>Size</th></tr></thead><tbody>${p.entries.map((e) => h`<tr><td><a href="/artifacts/${a.id}?path=${encodeURIComponent(e.path)}" data-link>${e.path}</a></td><td>${size(e.size)}</td></tr>`).join("")}</tbody></table>`;
    case "image":
      return h`<img class="preview" alt="${a.name}" src="${content}">`;
    case "html":
      return h`<iframe class="preview" sandbox="" title="HTML preview" srcdoc="${p.text}"></iframe>` + more;
    case "markdown":
      return `<div class="md">${markdown(p.text)}</div>` + more;
    case "csv":
      return csvTable(p.text) + more;
    case "json": {
      let t = p.text;
      try { t = JSON.stringify(JSON.parse(t), null, 2); } catch { /* truncated: show as is */ }
      return h`<pre class="preview">${t}</pre>` + more;
    }
    case "metrics":
      return kvTable(Object.entries(a.metadata || {})) + (p.text ? h`<pre class="preview">${p.text}</pre>` : "");
    case "classification":
      return confusion((a.metadata || {}).confusionMatrix) + `<h3>ROC</h3><canvas class="roc" width="360" height="300" aria-label="ROC curve"></canvas>`;
    case "binary":
      return `<p class="muted">Binary content; use Download.</p>`;
    default:
      return h`<pre class="preview">${p.text}</pre>` + more;
  }
}

function csvTable(text) {
  const sep = text.split("\n", 1)[0].includes("\t") ? "\t" : ",";
  const rows = text.split(/\r?\n/).filter((l) => l).slice(0, 101).map((l) => {
    const out = []; let cur = ""; let quoted = false;
    for (let i = 0; i < l.length; i++) {
      const c = l[i];
      if (quoted) { if (c === '"' && l[i + 1] === '"') { cur += '"'; i++; } else if (c === '"') quoted = false; else cur += c; }
      else if (c === '"') quoted = true; else if (c === sep) { out.push(cur); cur = ""; } else cur += c;
    }
    out.push(cur);
    return out;
  });
  if (!rows.length) return `<p class="muted">empty</p>`;
  return `<div class="scroll"><table class="csv"><thead><tr>${rows[0].map((c) => h`<th>${c}</th>`).join("")}</tr></thead><tbody>${rows.slice(1).map((r) => `<tr>${r.map((c) => h`<td>${c}</td>`).join("")}</tr>`).join("")}</tbody></table></div><p class="muted">First ${rows.length - 1} rows.</p>`;
}

/** A small Markdown renderer: headings, lists, code blocks, emphasis, links. Input is escaped first. */
export function markdown(src) {
  const inline = (s) => esc(s).replace(/`([^`]+)`/g, "<code>$1</code>").replace(/\*\*([^*]+)\*\*/g, "<strong>$1</strong>")
    .replace(/\*([^*]+)\*/g, "<em>$1</em>").replace(/\[([^\]]+)\]\((https?:[^)\s]+)\)/g, '<a href="$2" rel="noopener" target="_blank">$1</a>');
  const out = []; let list = null; let code = null; let para = [];
  const flush = () => { if (para.length) { out.push(`<p>${inline(para.join(" "))}</p>`); para = []; } if (list) { out.push(`</${list}>`); list = null; } };
  for (const line of src.split("\n")) {
    if (code !== null) { if (line.startsWith("```")) { out.push(`<pre>${esc(code)}</pre>`); code = null; } else code += line + "\n"; continue; }
    if (line.startsWith("```")) { flush(); code = ""; continue; }
    let m;
    if ((m = line.match(/^(#{1,6})\s+(.*)/))) { flush(); out.push(`<h${m[1].length + 1}>${inline(m[2])}</h${m[1].length + 1}>`); }
    else if ((m = line.match(/^\s*([-*]|\d+\.)\s+(.*)/))) {
      if (para.length) flush();
      const kind = /\d/.test(m[1]) ? "ol" : "ul";
      if (list !== kind) { if (list) out.push(`</${list}>`); out.push(`<${kind}>`); list = kind; }
      out.push(`<li>${inline(m[2])}</li>`);
    } else if (line.startsWith("|")) { flush(); out.push(`<pre>${esc(line)}</pre>`); }
    else if (!line.trim()) flush();
    else { if (list) { out.push(`</${list}>`); list = null; } para.push(line); }
  }
  if (code !== null) out.push(`<pre>${esc(code)}</pre>`);
  flush();
  return out.join("\n");
}

function confusion(cm) {
  if (!cm || !cm.rows) return `<p class="muted">No confusion matrix in the metadata.</p>`;
  const labels = (cm.annotationSpecs || []).map((s) => s.displayName);
  const max = Math.max(1, ...cm.rows.flatMap((r) => r.row));
  return `<h3>Confusion matrix</h3><table class="cm" style="width:auto"><thead><tr><th>actual \\ predicted</th>${labels.map((l) => h`<th>${l}</th>`).join("")}</tr></thead><tbody>${cm.rows.map((r, i) => `<tr><th>${esc(labels[i])}</th>${r.row.map((v) => `<td style="background:rgba(37,99,235,${(0.08 + 0.7 * v / max).toFixed(2)})">${esc(v)}</td>`).join("")}</tr>`).join("")}</tbody></table>`;
}

function drawRoc(canvas, points) {
  const ctx = canvas.getContext("2d");
  const W = canvas.width, H = canvas.height, P = 30;
  ctx.strokeStyle = "#ccc"; ctx.strokeRect(P, 10, W - P - 10, H - P - 10);
  ctx.beginPath(); ctx.setLineDash([4, 4]); ctx.moveTo(P, H - P); ctx.lineTo(W - 10, 10); ctx.stroke(); ctx.setLineDash([]);
  const pts = points.map((p) => [p.falsePositiveRate, p.recall]).filter(([x, y]) => x != null && y != null).sort((a, b) => a[0] - b[0]);
  ctx.strokeStyle = "#2563eb"; ctx.lineWidth = 2; ctx.beginPath();
  pts.forEach(([x, y], i) => { const px = P + x * (W - P - 10), py = H - P - y * (H - P - 10); i ? ctx.lineTo(px, py) : ctx.moveTo(px, py); });
  ctx.stroke();
  ctx.fillStyle = "#555"; ctx.font = "11px sans-serif"; ctx.fillText("false positive rate", W / 2 - 40, H - 8); ctx.fillText("TPR", 2, 20);
}

// ---------- lineage ----------
async function lineagePage(q, id) {
  const dir = q.get("direction") || "both";
  const g = await api(`/api/v1/lineage/${encodeURIComponent(id)}?direction=${dir}`);
  const root = g.artifacts.find((a) => a.id === g.root);
  main.innerHTML = h`<h1>Lineage of ${root.name} <span class="mono muted">${short(root.id)}</span></h1>
  <div class="toolbar" role="group" aria-label="direction">${raw(["up", "both", "down"].map((d) => h`<a class="badge ${d === dir ? "running" : ""}" href="/lineage/${id}?direction=${d}" data-link>${d === "up" ? "upstream" : d === "down" ? "downstream" : "both"}</a>`).join(" "))}
  <span class="muted">Artifacts are rounded; steps are square. Click a node to open it.</span></div>
  <svg class="dag" id="lineage" role="group" aria-label="lineage graph"></svg>`;
  const nodes = [
    ...g.artifacts.map((a) => ({ id: `artifact:${a.id}`, label: `${a.name} (${a.type_name})`, status: `artifact${a.id === g.root ? " root" : ""}`, href: `/artifacts/${a.id}` })),
    ...g.tasks.map((t) => ({ id: `task:${t.id}`, label: `${t.name} · ${short(t.run_id)}`, status: t.status, href: `/runs/${t.run_id}?task=${encodeURIComponent(t.name)}` })),
  ];
  drawDag(main.querySelector("#lineage"), nodes, g.edges, { onSelect: (nid) => navigate(nodes.find((n) => n.id === nid).href) });
}

// ---------- experiments ----------
async function experiments(q) {
  const exps = (await mlflow("experiments/search", { max_results: 1000, order_by: ["last_update_time DESC"] })).experiments || [];
  const expId = q.get("exp") || (exps.find((e) => e.experiment_id !== "0") || exps[0] || {}).experiment_id || "0";
  const state = { filter: q.get("filter") || "", order: q.get("order") || "attributes.start_time DESC", token: null, pages: [] };
  main.innerHTML = h`<h1>Experiments</h1>
  <form class="filters" id="f">
    <label>Experiment<select name="exp" id="exp">${raw(exps.map((e) => h`<option value="${e.experiment_id}" ${e.experiment_id === expId ? "selected" : ""}>${e.name}</option>`).join(""))}</select></label>
    <label>Filter (MLflow search syntax)<input class="wide" type="search" name="filter" value="${state.filter}" placeholder="metrics.accuracy > 0.8 and params.lr = '0.1'" data-focus></label>
    <button class="primary">Search</button>
    <button type="button" id="compare">Compare selected</button>
  </form>
  <div id="table"></div>`;
  const form = main.querySelector("#f");
  const load = async () => {
    const t0 = performance.now();
    let d;
    try {
      d = await mlflow("runs/search", { experiment_ids: [form.exp.value], filter: state.filter, order_by: [state.order], max_results: 100, page_token: state.token || undefined });
    } catch (err) {
      main.querySelector("#table").innerHTML = h`<div class="error" role="alert">${err.message}</div>`;
      return;
    }
    const runs = d.runs || [];
    const params = [...new Set(runs.flatMap((r) => (r.data.params || []).map((p) => p.key)))].sort().slice(0, 12);
    const metrics = [...new Set(runs.flatMap((r) => (r.data.metrics || []).map((m) => m.key)))].sort().slice(0, 12);
    const [okey, odir] = state.order.split(" ");
    const col = (key, label) => h`<th aria-sort="${okey === key ? (odir === "ASC" ? "ascending" : "descending") : "none"}"><button data-order="${key}">${label}${okey === key ? (odir === "ASC" ? " ▲" : " ▼") : ""}</button></th>`;
    const val = (list, k) => { const x = (list || []).find((p) => p.key === k); return x ? (typeof x.value === "number" ? Number(x.value.toPrecision(6)) : x.value) : ""; };
    main.querySelector("#table").innerHTML = h`<div class="scroll"><table id="exp-runs"><thead><tr><th><span class="muted">✓</span></th>${raw(col("attributes.run_name", "Run") + col("attributes.status", "Status") + col("attributes.start_time", "Started") + params.map((p) => col(`params.\`${p}\``, p)).join("") + metrics.map((m) => col(`metrics.\`${m}\``, m)).join(""))}</tr></thead><tbody>${raw(
      runs.map((r) => h`<tr><td><input type="checkbox" aria-label="select ${r.info.run_name || r.info.run_id}" data-run="${r.info.run_id}"></td><td><a href="/runs/${r.info.run_id}" data-link>${r.info.run_name || short(r.info.run_id)}</a></td><td>${badge(r.info.status)}</td><td>${time(r.info.start_time)}</td>${raw(params.map((p) => h`<td>${val(r.data.params, p)}</td>`).join("") + metrics.map((m) => h`<td>${val(r.data.metrics, m)}</td>`).join(""))}</tr>`).join(""))}</tbody></table></div>
    <div class="pager"><button id="prev" ${state.pages.length ? "" : "disabled"}>← Previous</button><span>${runs.length} runs on this page</span><button id="next" ${d.next_page_token ? "" : "disabled"}>Next →</button></div>`;
    main.dataset.renderMs = (performance.now() - t0).toFixed(1);
    main.querySelectorAll("[data-order]").forEach((b) => b.addEventListener("click", () => {
      const key = b.dataset.order;
      state.order = `${key} ${okey === key && odir === "DESC" ? "ASC" : "DESC"}`;
      state.token = null; state.pages = []; sync(); load();
    }));
    main.querySelector("#next").onclick = () => { state.pages.push(state.token); state.token = d.next_page_token; load(); };
    main.querySelector("#prev").onclick = () => { state.token = state.pages.pop(); load(); };
  };
  const sync = () => setQuery({ exp: form.exp.value, filter: state.filter, order: state.order === "attributes.start_time DESC" ? "" : state.order });
  form.addEventListener("submit", (e) => { e.preventDefault(); state.filter = form.filter.value; state.token = null; state.pages = []; sync(); load(); });
  form.exp.addEventListener("change", () => { state.token = null; state.pages = []; sync(); load(); });
  main.querySelector("#compare").onclick = () => {
    const ids = [...main.querySelectorAll("input[data-run]:checked")].map((c) => c.dataset.run);
    if (ids.length) navigate(`/compare?runs=${ids.join(",")}`);
  };
  await load();
}

// ---------- compare ----------
async function compare(q) {
  const ids = (q.get("runs") || "").split(",").filter(Boolean);
  const xaxis = q.get("x") || "step";
  if (!ids.length) {
    main.innerHTML = `<h1>Compare</h1><p>Select runs in <a href="/experiments" data-link>Experiments</a> and press <b>Compare selected</b>.</p>`;
    return;
  }
  // Two requests, however many runs: the experiments, then the selected runs in one search.
  const exps = (await mlflow("experiments/search", { max_results: 50000, view_type: "ALL" })).experiments || [];
  const quoted = ids.map((id) => `'${id.replace(/[^0-9a-zA-Z]/g, "")}'`).join(", ");
  const found = (await mlflow("runs/search", { experiment_ids: exps.map((e) => e.experiment_id), filter: `attributes.run_id IN (${quoted})`, run_view_type: "ALL", max_results: ids.length })).runs || [];
  const byId = new Map(found.map((r) => [r.info.run_id, r]));
  const missing = ids.filter((id) => !byId.has(id));
  if (missing.length) throw new Error(`No run with id ${missing.join(", ")}`);
  const runs = ids.map((id) => byId.get(id));
  const keys = [...new Set(runs.flatMap((r) => (r.data.metrics || []).map((m) => m.key)))].sort();
  const names = Object.fromEntries(runs.map((r) => [r.info.run_id, r.info.run_name || short(r.info.run_id)]));
  main.innerHTML = h`<h1>Compare ${runs.length} runs</h1>
  <div class="toolbar"><span>x axis:</span>${raw(["step", "time"].map((x) => h`<a class="badge ${x === xaxis ? "running" : ""}" href="/compare?runs=${ids.join(",")}&x=${x}" data-link>${x}</a>`).join(" "))}
  <span class="muted">Drag on a chart to zoom (the server sends the finer points), double-click to reset; hover for values.</span></div>
  <div id="charts">${raw(keys.length ? "" : `<p class="muted">These runs logged no metrics.</p>`)}</div>`;
  const box = main.querySelector("#charts");
  const t0 = performance.now();
  let points = 0;
  await Promise.all(keys.map(async (key) => {
    const div = document.createElement("div");
    div.className = "chart";
    div.dataset.metric = key;
    box.appendChild(div);
    const fetchSeries = async (range) => {
      const p = new URLSearchParams({ metric_key: key, max_results: 2500 });
      ids.forEach((id) => p.append("run_ids", id));
      if (range && xaxis === "step") { p.set("start_step", Math.floor(range[0])); p.set("end_step", Math.ceil(range[1])); }
      const d = await mlflow(`metrics/get-history-bulk-interval?${p}`);
      const by = new Map(ids.map((id) => [id, []]));
      for (const m of d.metrics || []) by.get(m.run_id)?.push([xaxis === "step" ? m.step : m.timestamp, m.value]);
      return ids.map((id) => ({ name: names[id], points: by.get(id).sort((a, b) => a[0] - b[0]) }));
    };
    const series = await fetchSeries(null);
    points += series.reduce((n, s) => n + s.points.length, 0);
    lineChart(div, key, series, { xlabel: xaxis, time: xaxis === "time", refetch: xaxis === "step" ? fetchSeries : null });
  }));
  main.dataset.renderMs = (performance.now() - t0).toFixed(1);
  main.dataset.points = String(points);
}

// ---------- model registry ----------
async function models() {
  const d = await mlflow("registered-models/search?max_results=1000");
  const list = d.registered_models || [];
  main.innerHTML = h`<h1>Model registry</h1>${raw(list.length ? h`<table id="models"><thead><tr><th>Model</th><th>Latest version</th><th>Aliases</th><th>Tags</th><th>Updated</th></tr></thead><tbody>${raw(list.map((m) => h`<tr><td><a href="/models/${encodeURIComponent(m.name)}" data-link>${m.name}</a></td><td>${(m.latest_versions || []).map((v) => `v${v.version}${v.current_stage && v.current_stage !== "None" ? ` (${v.current_stage})` : ""}`).join(", ")}</td><td>${(m.aliases || []).map((a) => `@${a.alias} → v${a.version}`).join(", ")}</td><td>${(m.tags || []).map((t) => `${t.key}=${t.value}`).join(", ")}</td><td>${time(m.last_updated_timestamp)}</td></tr>`).join(""))}</tbody></table>` : `<p class="muted">No registered models. Register one with mlflow.register_model(...).</p>`)}`;
}

async function modelPage(q, name) {
  const m = (await mlflow(`registered-models/get?name=${encodeURIComponent(name)}`)).registered_model;
  const vs = (await mlflow(`model-versions/search?${new URLSearchParams({ filter: `name='${name.replace(/'/g, "\\'")}'`, max_results: 1000 })}`)).model_versions || [];
  const aliases = (v) => (m.aliases || []).filter((a) => String(a.version) === String(v.version)).map((a) => `@${a.alias}`);
  main.innerHTML = h`<h1>${m.name}</h1><p>${m.description || ""}</p>
  <section class="card"><h2>Tags</h2>${raw(kvTable((m.tags || []).map((t) => [t.key, t.value])))}</section>
  <table id="versions"><thead><tr><th>Version</th><th>Stage</th><th>Aliases</th><th>Status</th><th>Source run</th><th>Source</th><th>Tags</th><th>Created</th></tr></thead><tbody>${raw(
    vs.map((v) => h`<tr><td>v${v.version}</td><td>${v.current_stage}</td><td>${aliases(v).join(", ")}</td><td>${badge(v.status)}</td><td>${v.run_id ? raw(h`<a href="/runs/${v.run_id}" data-link>${short(v.run_id)}</a>`) : "—"}</td><td class="mono">${v.source}</td><td>${(v.tags || []).map((t) => `${t.key}=${t.value}`).join(", ")}</td><td>${time(v.creation_timestamp)}</td></tr>`).join(""))}</tbody></table>`;
}

render();
