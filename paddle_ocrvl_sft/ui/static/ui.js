// paddle-ocrvl-sft ui: one page, five tabs, plain DOM and fetch (no build step, no CDN).
// Every number and check comes from the server (the CLI's own functions); this file only draws.
"use strict";

const $ = (id) => document.getElementById(id);
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "dataset") Object.assign(node.dataset, value);
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function query(params) {
  const kept = Object.entries(params).filter(([, v]) => v !== null && v !== undefined && v !== "");
  return new URLSearchParams(kept).toString();
}

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function api(method, path, body) {
  const options = { method, headers: {} };
  if (body !== undefined) {
    options.headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(body);
  }
  const response = await fetch(path, options);
  const data = await response.json().catch(() => ({}));
  if (response.status === 401) showLogin();
  if (!response.ok) throw new ApiError(response.status, (data.error && data.error.message) || response.statusText);
  return data;
}

function showError(node, error) {
  node.textContent = error ? (error.message || String(error)) : "";
  node.hidden = !error;
}

function fmt(value) {
  if (value === null || value === undefined) return "–";
  if (typeof value === "number" && !Number.isInteger(value)) {
    return Math.abs(value) < 1e-3 || Math.abs(value) >= 1e5 ? value.toExponential(2) : String(+value.toPrecision(6));
  }
  return String(value);
}

function clock(seconds) {
  seconds = Math.round(seconds);
  const h = Math.floor(seconds / 3600), m = Math.floor(seconds / 60) % 60, s = seconds % 60;
  return (h ? `${h}:${String(m).padStart(2, "0")}` : `${m}`) + `:${String(s).padStart(2, "0")}`;
}

function when(iso) {  // 2026-12-02T07:18:21+00:00 -> 2026-12-02 07:18:21
  return iso ? iso.replace("T", " ").replace(/([+-]\d\d:\d\d|Z)$/, "") : "";
}

function shell(words) {
  return words.map((w) => (/^[\w@%+=:,./-]+$/.test(w) ? w : `'${w.replace(/'/g, "'\\''")}'`)).join(" ");
}

// --- login (only when the UI was started with --api-key) ------------------------------------------

function showLogin() { $("login").hidden = false; $("login-key").focus(); }

$("login-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  try {
    await api("POST", "login", { key: $("login-key").value });
    $("login").hidden = true;
    loadInfo();
    route();
  } catch (error) { showError($("login-error"), error); }
});

// --- the workspace: pickers for paths --------------------------------------------------------------

const workspace = { datasets: [], models: [], plans: [], evals: [] };

async function refreshWorkspace(fresh = false) {
  try {
    Object.assign(workspace, await api("GET", "api/workspace?" + query({ fresh: fresh ? "true" : "" })));
  } catch (error) { return; }
  const fill = (id, items) => $(id).replaceChildren(...items.map((v) => el("option", { value: v })));
  fill("list-datasets", workspace.datasets);
  fill("list-models", workspace.models);
  fill("list-plans", workspace.plans);
}

// --- forms generated from a command's argparse definition ------------------------------------------

function datalistFor(field) {
  const hint = `${field.metavar || ""} ${field.dest}`;
  if (/jsonl|json|ANNOTATIONS|^IN\b|FILE/i.test(hint)) return "list-datasets";
  if (/PLAN_DIR/.test(hint)) return "list-plans";
  if (/DIR/.test(hint) && field.path === "read") return "list-models";
  return null;
}

function renderForm(form, fields, { primary = null, values = {}, onInput = null } = {}) {
  form.replaceChildren();
  const inputs = {};
  const make = (field) => {
    const id = `${form.id}-${field.dest}`;
    const label = el("label", { for: id }, field.positional ? (field.metavar || field.dest) : field.flag);
    const wrap = el("div", { class: "field" + (field.required ? " required" : ""), dataset: { dest: field.dest } }, label);
    const initial = values[field.dest];
    const placeholder = field.default !== null && field.default !== undefined && field.default !== false
      ? `default: ${field.default}` : (field.metavar || "");
    let control;
    if (field.kind === "flag") {
      control = el("input", { id, type: "checkbox", name: field.dest });
      control.checked = Boolean(initial);
      inputs[field.dest] = () => control.checked;
    } else if (field.kind === "choice") {
      control = el("select", { id, name: field.dest },
        el("option", { value: "" }, field.default !== null ? `(default: ${field.default})` : "(choose)"),
        ...field.choices.map((c) => el("option", { value: c }, c)));
      if (initial) control.value = initial;
      inputs[field.dest] = () => control.value;
    } else if (field.repeat && field.positional) {
      control = el("textarea", { id, name: field.dest, rows: 3, placeholder: `${field.metavar || field.dest}, one per line` });
      control.value = (initial || []).join("\n");
      inputs[field.dest] = () => control.value.split("\n").map((s) => s.trim()).filter(Boolean);
    } else if (field.repeat) {
      const list = el("div", { class: "values" });
      const add = (value = "") => {
        const input = el("input", { type: "text", name: field.dest, value, placeholder: field.metavar || "",
          list: datalistFor(field) });
        if (!list.querySelector("input")) input.id = id;
        list.insertBefore(input, list.querySelector("button.add"));
        input.addEventListener("input", () => onInput && onInput());
        return input;
      };
      list.append(el("button", { type: "button", class: "add", onclick: () => add().focus() }, `+ another ${field.flag}`));
      (initial && initial.length ? initial : [""]).forEach((v) => add(v));
      control = list;
      inputs[field.dest] = () => [...list.querySelectorAll("input")].map((i) => i.value.trim()).filter(Boolean);
    } else {
      control = el("input", { id, type: "text", name: field.dest, placeholder, list: datalistFor(field),
        inputmode: field.kind === "int" || field.kind === "float" ? "decimal" : null });
      if (initial !== undefined && initial !== null) control.value = initial;
      inputs[field.dest] = () => control.value.trim();
    }
    if (onInput) control.addEventListener(field.kind === "flag" || field.kind === "choice" ? "change" : "input", onInput);
    wrap.append(control);
    if (field.help) wrap.append(el("div", { class: "help" }, field.help));
    return wrap;
  };
  const main = primary ? fields.filter((f) => primary.includes(f.dest) || f.required) : fields;
  const rest = primary ? fields.filter((f) => !main.includes(f)) : [];
  main.sort((a, b) => (primary ? primary.indexOf(a.dest) - primary.indexOf(b.dest) : 0));
  form.append(...main.map(make));
  if (rest.length) form.append(el("details", {}, el("summary", {}, `More options (${rest.length})`), ...rest.map(make)));
  return () => Object.fromEntries(Object.entries(inputs).map(([dest, get]) => [dest, get()])
    .filter(([, v]) => v !== "" && v !== false && !(Array.isArray(v) && !v.length)));
}

// --- jobs: commands the UI runs as processes -------------------------------------------------------

function jobLabel(job) {
  if (job.state === "failed" && job.command.join(" ") === "data validate" && job.exit === 1) {
    return "done (exit 1: the input has errors)";
  }
  return job.state === "failed" ? `failed (exit ${job.exit})` : job.state;
}

async function followJob(box, id, onDone) {
  const state = el("span", { class: "badge" });
  // Ctrl-C to the job's process group (POST api/jobs/ID/stop), as Stop does for a run
  const stop = el("button", { type: "button", class: "danger", hidden: true, onclick: async () => {
    stop.disabled = true;
    try { await api("POST", `api/jobs/${id}/stop`, {}); } catch (error) { box.append(el("p", { class: "error" }, error.message)); }
  } }, "Stop");
  const head = el("div", {}, state, " ", stop, " ", el("code", { class: "cmd" }));
  const log = el("pre", { class: "log" });
  box.replaceChildren(head, log);
  for (let failures = 0; ;) {
    let job;
    try { job = await api("GET", `api/jobs/${id}?lines=80`); failures = 0; } catch (error) {
      // the job runs on without the page or the UI: keep asking (the UI may be restarting), unless it is unknown
      if (error instanceof ApiError && error.status < 500 && error.status !== 401) {
        box.append(el("p", { class: "error" }, error.message));
        return;
      }
      state.textContent = `not reachable (${error.message}): retrying`;
      await sleep(Math.min(10000, 1000 * 2 ** Math.min(failures++, 4)));
      continue;
    }
    box.dataset.state = job.state;
    state.className = `badge ${job.state}`;
    state.textContent = jobLabel(job);
    stop.hidden = job.state !== "running";
    head.querySelector(".cmd").textContent = "paddle-ocrvl-sft " + shell([...job.command, ...job.argv]);
    log.textContent = job.log.join("\n");
    log.scrollTop = log.scrollHeight;
    if (!["running", "stopping"].includes(job.state)) {
      if (onDone) onDone(job);
      return;
    }
    await sleep(700);
  }
}

async function runJob(box, command, values, onDone) {
  box.dataset.state = "starting";
  box.replaceChildren(el("span", { class: "muted" }, "starting…"));
  try {
    const job = await api("POST", "api/jobs", { command, values });
    await followJob(box, job.id, onDone);
  } catch (error) {
    box.dataset.state = "error";
    box.replaceChildren(el("p", { class: "error" }, error.message));
  }
}

// --- Data ------------------------------------------------------------------------------------------

const data = { path: null, abs: null, offset: 0, limit: 10, total: 0, buildFields: {} };

function dataParams() {
  return { path: data.path, model: $("data-model").value.trim(), max_seq_len: $("data-max-seq-len").value.trim() };
}

async function openDataset(path) {
  if (path) $("data-path").value = path;
  showError($("data-error"), null);
  let summary;
  try {
    summary = await api("GET", "api/data/open?" + query({ ...dataParams(), path: $("data-path").value.trim() }));
  } catch (error) {
    $("data-view").hidden = true;
    return showError($("data-error"), error);
  }
  Object.assign(data, { path: summary.path, abs: summary.abs_path, offset: 0 });
  location.hash = "#data?" + query({ path: summary.path });
  $("data-view").hidden = false;
  const v = summary.validation;
  $("data-file").textContent = summary.path;
  $("data-counts").textContent = `${v.samples} samples: ${v.valid} valid, ${v.rejected} rejected ` +
    `(${v.errors} errors, ${v.warnings} warnings) · longest ${v.max_tokens} tokens (${v.tokens_exact ? "exact" : "estimated"}) · ` +
    "kinds: " + (Object.entries(summary.kinds).map(([k, n]) => `${k} ${n}`).join(", ") || "–");
  $("data-rules").replaceChildren(...Object.entries(v.by_rule).map(([rule, n]) =>
    el("span", { class: "chip", title: "show these samples", onclick: () => filterSamples(`rule:${rule}`) }, `${rule} ${n}`)));
  const pct = summary.percentiles;
  const cols = Object.keys(Object.values(pct)[0] || {});
  $("data-percentiles").replaceChildren(
    el("tr", {}, el("th", {}, ""), ...cols.map((c) => el("th", {}, c === "p100" ? "max" : c))),
    ...Object.entries(pct).map(([name, row]) => el("tr", {}, el("td", {}, name),
      ...cols.map((c) => el("td", { class: "value" }, row[c])))));
  const rec = summary.recommended;
  $("data-recommended").textContent = `recommended: max_seq_len ${rec.max_seq_len}, packing_size ${rec.packing_size} — ${rec.why}`;
  $("data-hist").src = "api/data/stats.png?" + query(dataParams());
  $("data-hist").hidden = v.valid === 0;
  const rules = Object.keys(v.by_rule);
  $("problem-rule").replaceChildren(el("option", { value: "" }, "all"), ...rules.map((r) => el("option", { value: r }, r)));
  const show = $("sample-show");
  [...show.querySelectorAll("option[data-extra]")].forEach((o) => o.remove());
  rules.forEach((r) => show.append(el("option", { value: `rule:${r}`, dataset: { extra: "1" } }, `rule: ${r}`)));
  show.value = "all";
  await Promise.all([loadProblems(), loadSamples()]);
}

async function loadProblems() {
  const params = { ...dataParams(), severity: $("problem-severity").value, rule: $("problem-rule").value, limit: 200 };
  const result = await api("GET", "api/data/problems?" + query(params));
  $("problem-count").textContent = `${result.total} problem(s)` + (result.total > result.problems.length ? `, first ${result.problems.length} shown` : "");
  $("problems").replaceChildren(el("tr", {}, el("th", {}, "where"), el("th", {}, "severity"), el("th", {}, "problem (rule)")),
    ...result.problems.map((p) => el("tr", { onclick: () => filterSamples(`line:${p.line}`), title: "show this sample" },
      el("td", {}, `${p.path}:${p.line}`), el("td", { class: `sev-${p.severity}` }, p.severity),
      el("td", {}, `${p.message} [${p.rule}]`))));
}

function filterSamples(show) {
  const select = $("sample-show");
  if (![...select.options].some((o) => o.value === show)) select.append(el("option", { value: show, dataset: { extra: "1" } }, show.replace(":", ": ")));
  select.value = show;
  data.offset = 0;
  loadSamples().then(() => $("samples").scrollIntoView({ behavior: "smooth" }));
}

async function loadSamples() {
  const params = { ...dataParams(), show: $("sample-show").value, offset: data.offset, limit: data.limit };
  const page = await api("GET", "api/data/samples?" + query(params));
  data.total = page.total;
  $("sample-range").textContent = page.total ? `${page.offset + 1}–${page.offset + page.samples.length} of ${page.total}` : "none";
  $("sample-prev").disabled = page.offset === 0;
  $("sample-next").disabled = page.offset + page.samples.length >= page.total;
  $("samples").replaceChildren(...page.samples.map(sampleCard));
}

function sampleCard(sample) {
  const images = el("div", { class: "images" }, ...sample.images.map((image) => !image.local
    ? el("p", { class: "muted" }, `(not a local file, not fetched: ${image.url})`)
    : !image.exists ? el("p", { class: "bad" }, `(no such file: ${image.url})`)
    : el("img", { src: "api/data/image?" + query({ path: data.path, line: sample.line, index: image.index }), alt: image.url, title: image.url })));
  if (!sample.images.length) images.append(el("p", { class: "muted" }, "(no image)"));
  const body = el("div", {},
    el("div", { class: "head" }, `line ${sample.line} `, sample.kind ? el("span", { class: "badge" }, sample.kind) : null),
    ...sample.problems.map((p) => el("div", { class: `problem sev-${p.severity}` }, `${p.severity}: ${p.message} [${p.rule}]`)));
  for (const [i, turn] of (sample.turns || []).entries()) {
    const n = sample.turns.length > 1 ? ` ${i + 1}` : "";
    body.append(el("div", { class: "label" }, `prompt${n}`), el("pre", { class: "prompt" }, turn.prompt),
      el("div", { class: "label" }, `answer${n}`), el("pre", { class: "answer" }, turn.answer));
  }
  if (sample.kie) body.append(kieTable(sample.kie));
  body.append(el("details", {}, el("summary", { class: "muted" }, "raw JSON"), el("pre", {}, sample.raw || "")));
  return el("div", { class: "sample", dataset: { line: sample.line } }, images, body);
}

function kieTable(kie) {
  const box = el("div", { class: "kie" }, el("div", { class: "label" },
    `KIE fields (asked: ${kie.asked.length ? kie.asked.join(", ") : "everything"})`));
  if (kie.error) return box.appendChild(el("p", { class: "error" }, kie.error)) && box;
  box.append(el("table", {}, el("tr", {}, el("th", {}, "field"), el("th", {}, "value")),
    ...kie.fields.map((f) => el("tr", {}, el("td", {}, el("code", {}, f.path)), el("td", {}, f.value)))));
  if (kie.missing && kie.missing.length) box.append(el("p", { class: "bad" }, `asked but not in the answer: ${kie.missing.join(", ")}`));
  if (kie.unasked && kie.unasked.length) box.append(el("p", { class: "bad" }, `in the answer but not asked: ${kie.unasked.join(", ")}`));
  return box;
}

function stem(path) { return path.replace(/\.(jsonl|json)$/i, ""); }

function offerOpen(box, paths) {
  box.append(el("p", {}, ...paths.map((p) => el("button", { type: "button", class: "secondary", onclick: () => openDataset(p) }, `Open ${p}`))));
  refreshWorkspace(true);
}

$("data-open").addEventListener("submit", (event) => { event.preventDefault(); openDataset(); });
$("problem-severity").addEventListener("change", loadProblems);
$("problem-rule").addEventListener("change", loadProblems);
$("sample-show").addEventListener("change", () => { data.offset = 0; loadSamples(); });
$("sample-prev").addEventListener("click", () => { data.offset = Math.max(0, data.offset - data.limit); loadSamples(); });
$("sample-next").addEventListener("click", () => { data.offset += data.limit; loadSamples(); });
$("data-clean").addEventListener("click", () => {
  const out = `${stem(data.path)}.clean.jsonl`;
  runJob($("data-action-job"), "data-validate", { files: [data.path], write_clean: out, force: $("data-force").checked },
    (job) => { if (job.exit !== null && job.exit <= 1 && job.log.some((l) => l.startsWith("wrote "))) offerOpen($("data-action-job"), [out]); });
});
$("data-split").addEventListener("click", () => {
  const values = { file: data.path, val: $("split-val").value, seed: $("split-seed").value,
    allow_uneven: $("split-uneven").checked, force: $("data-force").checked };
  runJob($("data-action-job"), "data-split", values, (job) => {
    if (job.exit === 0) offerOpen($("data-action-job"), [`${stem(data.path)}.train.jsonl`, `${stem(data.path)}.val.jsonl`]);
  });
});
$("data-convert-toggle").addEventListener("click", () => { $("data-convert").hidden = !$("data-convert").hidden; showBuildForm(); });
document.querySelectorAll('input[name="data-build"]').forEach((r) => r.addEventListener("change", showBuildForm));

async function showBuildForm() {
  const name = document.querySelector('input[name="data-build"]:checked').value;
  const form = await api("GET", `api/forms/${name}`);
  const getValues = renderForm($("data-build-form"), form.fields);
  $("data-build-form").append(el("div", { class: "actions" }, el("button", { type: "button", onclick: () => {
    const values = getValues();
    runJob($("data-build-job"), name, values, (job) => {
      const out = values.output || values.out;
      if (job.exit === 0 && out) offerOpen($("data-build-job"), [out]);
    });
  } }, `Run ${form.command.join(" ")}`)));
}

async function showData(params) {
  await refreshWorkspace();
  if (params.get("path") && params.get("path") !== data.path) openDataset(params.get("path"));
}

// --- Plan ------------------------------------------------------------------------------------------

const PLAN_PRIMARY = ["data", "eval", "model", "release", "backend", "device", "lora", "epochs", "gpus", "nodes", "lr", "out", "overrides"];
const plan = { getValues: null, seq: 0, timer: null, ok: false };

async function showPlan() {
  await refreshWorkspace();
  if (plan.getValues) return;
  const form = await api("GET", "api/forms/plan");
  plan.getValues = renderForm($("plan-form"), form.fields, { primary: PLAN_PRIMARY, onInput: schedulePlan });
}

function schedulePlan() {
  clearTimeout(plan.timer);
  plan.timer = setTimeout(computePlan, 350);
}

async function computePlan() {
  const seq = ++plan.seq;
  $("plan-state").textContent = "computing…";
  let result;
  try { result = await api("POST", "api/plan/compute", { values: plan.getValues() }); } catch (error) {
    result = { ok: false, error: error.message };
  }
  if (seq !== plan.seq) return;  // a newer computation is on its way
  plan.ok = result.ok;
  $("plan-write").disabled = !result.ok;
  $("plan-result").dataset.state = result.ok ? "ok" : "error";
  $("plan-state").textContent = result.ok ? "what `plan` would write (nothing is written until you press Write plan)" : "refused";
  showError($("plan-error"), result.ok ? null : new Error(result.error));
  $("plan-command").textContent = result.command_line ? "$ " + result.command_line : "";
  const release = result.release;
  $("plan-release").textContent = !release ? "" : release.error ? `release: ${release.error}` :
    `model: ${release.title} (release ${release.name}) — ${release.evidence.join("; ")}` + (release.notes.length ? ` · ${release.notes.join(" ")}` : "");
  const record = result.record;
  if (!record) {
    $("plan-numbers").replaceChildren();
    $("plan-warnings").replaceChildren();
    $("plan-launch").textContent = "";
    return;
  }
  const rows = Object.entries(record.numbers).map(([name, n]) => [name, n.value, n.formula, n.inputs]);
  const est = record.estimates || {};
  for (const [key, label] of [["gpu_memory_gb_per_gpu", "GPU memory / GPU (ESTIMATE, GB)"], ["seconds_per_step", "time / step (ESTIMATE, s)"], ["total_hours", "total time (ESTIMATE, h)"]]) {
    if (est[key]) rows.push([label, est[key].value, est[key].formula, est[key].inputs]);
  }
  $("plan-numbers").replaceChildren(el("tr", {}, el("th", {}, "number"), el("th", {}, "value"), el("th", {}, "formula"), el("th", {}, "inputs")),
    ...rows.map(([name, value, formula, inputs]) => el("tr", { dataset: { name } }, el("td", {}, name.replace(/_/g, "_\u200b")),
      el("td", { class: "value" }, fmt(value)), el("td", { class: "formula" }, formula),
      el("td", { class: "inputs" }, Object.entries(inputs || {}).filter(([, v]) => v !== null && v !== undefined)
        .map(([k, v]) => `${k}=${Array.isArray(v) ? "[" + v.map(fmt).join(", ") + "]" : fmt(v)}`).join("  ")))));
  $("plan-warnings").replaceChildren(...(record.warnings || []).map((w) => el("li", {}, w)));
  const launch = record.train;
  const env = Object.entries(launch.env || {}).map(([k, v]) => `${k}=${v}`).join(" ");
  $("plan-launch").textContent = `launch (${launch.nodes} node(s), same on each): ${env} ${shell(launch.command || [])}`;
}

$("plan-write").addEventListener("click", () => {
  const values = plan.getValues();
  $("plan-written").replaceChildren();
  runJob($("plan-job"), "plan", values, (job) => {
    if (job.exit !== 0) return;
    const link = el("a", { href: "#runs?" + query({ plan: values.out }) }, `Train it: open ${values.out} in Runs`);
    $("plan-written").replaceChildren(link);
    refreshWorkspace(true);
  });
});

// --- Runs ------------------------------------------------------------------------------------------

const runs = { plan: null, run: null, points: [], evalPoints: [], max: null, timer: null, launchFor: null, pinned: null };

async function showRuns(params) {
  await refreshPlans();
  const wanted = params.get("plan") || runs.plan || (runs.list && runs.list[0] && runs.list[0].plan);
  if (wanted) selectPlan(wanted);
  pollRuns();
}

async function refreshPlans() {
  const result = await api("GET", "api/runs");
  runs.list = result.plans;
  $("plans").replaceChildren(...result.plans.map((p) => el("li", { class: p.plan === runs.plan ? "selected" : "", dataset: { plan: p.plan },
    onclick: () => { location.hash = "#runs?" + query({ plan: p.plan }); } },
    el("div", {}, p.plan, " ", el("span", { class: `badge ${p.state}` }, p.state)),
    el("div", { class: "small" }, `${p.backend} · ${p.device} · ${p.runs} run(s)` +
      (p.progress.step ? ` · step ${p.progress.step}/${p.progress.max_steps}` : "")))));
  if (!result.plans.length) $("plans").append(el("li", { class: "muted" }, "no plan yet: write one on the Plan page"));
}

function selectPlan(planPath) {
  if (runs.plan !== planPath) {
    Object.assign(runs, { plan: planPath, run: null, pinned: null, points: [], evalPoints: [], launchFor: null,
      history: [], historyFor: null });
    drawCharts();
  }
  $("run-detail").hidden = false;
  document.querySelectorAll("#plans li").forEach((li) => li.classList.toggle("selected", li.dataset.plan === planPath));
}

async function pollRuns() {
  clearTimeout(runs.timer);
  if (currentPage() !== "runs") return;
  try {
    if (runs.plan) await refreshRun();
    await refreshPlans();
  } catch (error) {
    showError($("run-message"), error);
  }
  runs.timer = setTimeout(pollRuns, 1500);
}

async function refreshRun() {
  const planPath = runs.plan;
  const state = await api("GET", "api/runs/plan?" + query({ plan: planPath }));
  if (planPath !== runs.plan) return;
  $("run-plan").textContent = state.plan;
  $("run-state").textContent = state.state;
  $("run-state").className = `badge ${state.state}`;
  $("run-detail").dataset.state = state.state;
  const nums = (state.record.numbers || {});
  $("run-about").textContent = `${state.backend} on ${state.device} · base ${state.model} · max_steps ${state.max_steps}` +
    (nums.G ? ` · G=${nums.G.value}` : "") + ` · checkpoints: ${state.checkpoints.length ? state.checkpoints.join(", ") : "none"}`;
  $("run-start").disabled = !state.can_start;
  $("run-resume").disabled = !state.can_resume;
  $("run-stop").disabled = !state.can_stop;
  $("run-force").disabled = state.can_stop;
  $("run-message").hidden = !state.message;
  $("run-message").textContent = state.message || "";
  const console_ = $("run-console");
  const atEnd = console_.scrollTop + console_.clientHeight >= console_.scrollHeight - 4;
  console_.textContent = state.job ? (state.console || []).join("\n")
    : "(not started from this UI: train's own output went to its terminal; the trainer's log is below)";
  if (atEnd) console_.scrollTop = console_.scrollHeight;
  $("run-list").replaceChildren(el("tr", {}, ...["run", "started", "finished", "state", "last step", "resumed from"].map((h) => el("th", {}, h))),
    ...state.runs.map((r) => el("tr", { dataset: { run: r.id }, onclick: () => { runs.pinned = r.id; }, style: "cursor:pointer" },
      el("td", { class: "nowrap" }, r.id), el("td", { class: "nowrap" }, when(r.started)), el("td", { class: "nowrap" }, when(r.finished)),
      el("td", {}, r.state),
      el("td", {}, r.last_step ?? ""), el("td", {}, r.resume_from ? r.resume_from.split("/").pop() : ""))));
  const links = [];
  if (state.bundle) links.push(el("a", { href: "#try?" + query({ model: state.bundle }) }, "Try the bundle"));
  if (state.eval) links.push(el("a", { href: "#eval?" + query({ dir: state.eval }) }, "Open its eval (base vs fine-tuned)"));
  $("run-links").replaceChildren(...links.flatMap((a, i) => (i ? [" · ", a] : [a])));
  if (runs.launchFor !== planPath) {
    runs.launchFor = planPath;
    loadLaunch(planPath);
  }
  const wanted = runs.pinned || (state.runs.length ? state.runs[state.runs.length - 1].id : null);
  if (!wanted) return;
  if (wanted !== runs.run) Object.assign(runs, { run: wanted, points: [], evalPoints: [] });
  const earlier = state.runs.map((r) => r.id).filter((id) => id < wanted);
  if (runs.historyFor !== `${planPath} ${earlier.join(",")}`) {  // the runs before this one, drawn in grey
    const parts = await Promise.all(earlier.map((id) => api("GET", "api/runs/metrics?" + query({ plan: planPath, run: id }))));
    runs.history = parts.map((m) => m.points);
    runs.historyFor = `${planPath} ${earlier.join(",")}`;
  }
  const m = await api("GET", "api/runs/metrics?" + query({ plan: planPath, run: wanted, since: runs.points.length }));
  if (planPath !== runs.plan || wanted !== runs.run) return;
  runs.points.push(...m.points);
  runs.evalPoints = m.eval_points;
  runs.max = m.progress.max_steps;
  const p = m.progress;
  $("run-bar").style.width = p.step && p.max_steps ? `${Math.min(100, 100 * p.step / p.max_steps)}%` : "0";
  $("run-progress").textContent = p.step ? [`run ${m.run}: step ${p.step}/${p.max_steps}`, `loss ${fmt(p.loss)}`,
    p.lr !== undefined && p.lr !== null ? `lr ${fmt(p.lr)}` : null,
    p.tokens_per_second ? `${Math.round(p.tokens_per_second)} tokens/s`
      : p.nominal_tokens_per_second ? `${Math.round(p.nominal_tokens_per_second)} tokens/s nominal` : null,
    p.eta_seconds !== undefined && state.state === "training" ? `ETA ${clock(p.eta_seconds)}` : null].filter(Boolean).join(" · ")
    : `run ${m.run}: no step logged yet`;
  drawCharts();
  const log = await api("GET", "api/runs/log?" + query({ plan: planPath, run: wanted, lines: 120 }));
  const trainLog = $("run-log");
  const logAtEnd = trainLog.scrollTop + trainLog.clientHeight >= trainLog.scrollHeight - 4;
  trainLog.textContent = log.train_log.join("\n");
  if (logAtEnd) trainLog.scrollTop = trainLog.scrollHeight;
}

async function loadLaunch(planPath) {
  const l = await api("GET", "api/runs/launch?" + query({ plan: planPath }));
  const env = Object.entries(l.env).map(([k, v]) => `${k}=${v}`).join(" ");
  const where = l.gpus_per_node ? `${l.nodes} node(s) × ${l.gpus_per_node} GPU(s)` : "one CPU process";
  const lines = [`# Start / Resume run this (a normal train process: it outlives the page and the UI):`, `$ ${l.train}`, "",
    `# the plan's launch (plan.json), ${where}, the same on each node:`, `${env} ${shell(l.command)}`, ""];
  lines.push(`# train ${l.dry_run.resume ? "--resume " : ""}--dry-run on this machine:`);
  lines.push(...(l.dry_run.ok ? l.dry_run.lines : [...l.dry_run.lines, `error: ${l.dry_run.error}`]));
  if (l.per_node.length) lines.push("", "# several nodes: on each (node 0 first):", ...l.per_node.map((c) => `$ ${c}`));
  $("run-launch").textContent = lines.join("\n");
}

async function runAction(mode) {
  ["run-start", "run-resume", "run-force"].forEach((id) => { $(id).disabled = true; });  // one click, one train
  try {
    await api("POST", "api/runs/start", { plan: runs.plan, mode, overrides: $("run-overrides").value });
    runs.pinned = null;
    runs.launchFor = null;
    pollRuns();
  } catch (error) { showError($("run-message"), error); }
}

$("run-start").addEventListener("click", () => runAction("start"));
$("run-resume").addEventListener("click", () => runAction("resume"));
$("run-force").addEventListener("click", () => {
  if (confirm("Start over: train --force deletes the output dir (its checkpoints) and trains from step 0.")) runAction("force");
});
$("run-stop").addEventListener("click", async () => {
  try { await api("POST", "api/runs/stop", { plan: runs.plan }); pollRuns(); } catch (error) { showError($("run-message"), error); }
});

// a small SVG line chart: series of [x, y] points, dots for sparse series
function lineChart(svg, series, { xmax = null, logY = false } = {}) {
  const ns = "http://www.w3.org/2000/svg";
  const node = (tag, attrs, text) => {
    const n = document.createElementNS(ns, tag);
    for (const [k, v] of Object.entries(attrs)) n.setAttribute(k, v);
    if (text !== undefined) n.textContent = text;
    return n;
  };
  const width = svg.clientWidth || 500, height = svg.clientHeight || 220;
  const pad = { l: 52, r: 12, t: 10, b: 24 };
  svg.replaceChildren();
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  const all = series.flatMap((s) => s.points).filter(([, y]) => y !== null && Number.isFinite(y) && (!logY || y > 0));
  svg.dataset.points = String(series[0] ? series[0].points.length : 0);
  if (!all.length) {
    svg.append(node("text", { x: width / 2 - 40, y: height / 2 }, "no points yet"));
    return;
  }
  const tf = (y) => (logY ? Math.log10(y) : y);
  const xs = all.map(([x]) => x), ys = all.map(([, y]) => tf(y));
  const x0 = 0, x1 = Math.max(xmax || 0, ...xs, 1);
  let y0 = Math.min(...ys), y1 = Math.max(...ys);
  if (y0 === y1) { const d = Math.abs(y0) * 0.1 || 1; y0 -= d; y1 += d; }
  else { const d = (y1 - y0) * 0.05; y0 -= d; y1 += d; }
  const px = (x) => pad.l + (x - x0) / (x1 - x0) * (width - pad.l - pad.r);
  const py = (y) => height - pad.b - (tf(y) - y0) / (y1 - y0) * (height - pad.t - pad.b);
  for (let i = 0; i <= 4; i++) {
    const v = y0 + (y1 - y0) * i / 4, y = height - pad.b - i / 4 * (height - pad.t - pad.b);
    svg.append(node("line", { x1: pad.l, x2: width - pad.r, y1: y, y2: y, class: "grid" }));
    svg.append(node("text", { x: 4, y: y + 3 }, fmt(logY ? 10 ** v : v)));
  }
  const step = niceStep(x1 / 6);
  for (let v = 0; v <= x1; v += step) svg.append(node("text", { x: px(v) - 6, y: height - 6 }, String(v)));
  svg.append(node("line", { x1: pad.l, x2: pad.l, y1: pad.t, y2: height - pad.b, class: "axis" }));
  svg.append(node("line", { x1: pad.l, x2: width - pad.r, y1: height - pad.b, y2: height - pad.b, class: "axis" }));
  for (const s of series) {
    const pts = s.points.filter(([, y]) => y !== null && Number.isFinite(y) && (!logY || y > 0));
    if (!pts.length) continue;
    if (s.dots) {
      for (const [x, y] of pts) svg.append(node("circle", { cx: px(x), cy: py(y), r: 3.5, fill: s.color, class: s.name }));
    } else {
      svg.append(node("polyline", { points: pts.map(([x, y]) => `${px(x)},${py(y)}`).join(" "), fill: "none",
        stroke: s.color, "stroke-width": 1.6, class: s.name }));
    }
  }
  let lx = pad.l + 8;
  const named = series.filter((s, i) => s.points.length && series.findIndex((t) => t.name === s.name && t.points.length) === i);
  for (const s of named) {
    svg.append(node("rect", { x: lx, y: pad.t + 2, width: 10, height: 3, fill: s.color }));
    svg.append(node("text", { x: lx + 14, y: pad.t + 7 }, s.name.replace("-", " ")));
    lx += 90;
  }
}

function niceStep(raw) {
  const power = 10 ** Math.floor(Math.log10(Math.max(raw, 1)));
  return [1, 2, 5, 10].map((m) => m * power).find((s) => s >= raw) || power * 10;
}

function drawCharts() {
  const loss = runs.points.map((p) => [p.step, p.loss]);
  const before = (runs.history || []).map((points) => ({ name: "earlier-run", color: "#b7bfcf",
    points: points.map((p) => [p.step, p.loss]) }));
  lineChart($("chart-loss"), [{ name: "loss", color: "#2f5bd3", points: loss }, ...before,
    { name: "eval-loss", color: "#d9822b", points: runs.evalPoints.map((p) => [p.step, p.eval_loss]), dots: true }], { xmax: runs.max });
  lineChart($("chart-lr"), [{ name: "lr", color: "#137a2a", points: runs.points.filter((p) => p.lr !== undefined).map((p) => [p.step, p.lr]) },
    ...(runs.history || []).map((points) => ({ name: "earlier-run", color: "#b7bfcf",
      points: points.filter((p) => p.lr !== undefined).map((p) => [p.step, p.lr]) }))], { xmax: runs.max });
}

// --- Eval ------------------------------------------------------------------------------------------

const evals = { dir: null, offset: 0, limit: 8, getValues: null };

async function showEval(params) {
  await refreshWorkspace();
  if (!evals.getValues) {
    const form = await api("GET", "api/forms/eval");
    evals.getValues = renderForm($("eval-form"), form.fields, {
      primary: ["model", "baseline", "data", "out", "max_new_tokens"], onInput: null });
    $("eval-form-model").addEventListener("change", evalDefaults);
  }
  await refreshEvals();
  const dir = params.get("dir");
  if (dir) openEval(dir);
}

async function evalDefaults() {
  const model = $("eval-form-model").value.trim();
  if (!model) return;
  try {
    const d = await api("GET", "api/evals/defaults?" + query({ model }));
    for (const key of ["baseline", "data", "out"]) {
      const input = $(`eval-form-${key}`);
      if (input && !input.value && d[key]) input.value = d[key];
    }
  } catch (error) { /* not a plan's bundle: nothing to suggest */ }
}

async function refreshEvals() {
  const result = await api("GET", "api/evals");
  $("evals").replaceChildren(...result.evals.map((e) => el("li", { class: e.dir === evals.dir ? "selected" : "", dataset: { dir: e.dir },
    onclick: () => { location.hash = "#eval?" + query({ dir: e.dir }); } },
    el("div", {}, e.dir), el("div", { class: "small" }, e.error || `${e.n} samples · ${e.model}` + (e.baseline ? ` vs ${e.baseline}` : "")))));
  if (!result.evals.length) $("evals").append(el("li", { class: "muted" }, "no evaluation yet: train a plan with an eval file, or run one"));
}

$("eval-run").addEventListener("click", () => {
  const values = evals.getValues();
  runJob($("eval-job"), "eval", values, async (job) => {
    await refreshEvals();
    if (job.exit === 0 || job.exit === 1) {
      const out = values.out || "runs/eval";
      location.hash = "#eval?" + query({ dir: out });
    }
  });
});

async function openEval(dir) {
  evals.dir = dir;
  evals.offset = 0;
  document.querySelectorAll("#evals li").forEach((li) => li.classList.toggle("selected", li.dataset.dir === dir));
  let s;
  try { s = await api("GET", "api/evals/summary?" + query({ dir })); } catch (error) {
    $("eval-detail").hidden = false;
    return showError($("eval-about"), error);
  }
  evals.dir = s.dir;
  $("eval-detail").hidden = false;
  $("eval-dir").textContent = s.dir;
  $("eval-about").textContent = `${s.n} samples of ${s.data} · fine-tuned: ${s.model}` + (s.baseline ? ` · base: ${s.baseline}` : "") +
    (s.errors ? ` · ${s.errors} failed predictions` : "");
  $("eval-table").replaceChildren(el("tr", {}, ...["task", "metric", "base", "fine-tuned", "change"].map((h) => el("th", {}, h))),
    ...s.table.map((r) => el("tr", {}, el("td", {}, `${r.task} (n=${r.n})`), el("td", {}, r.metric), el("td", { class: "value" }, r.baseline ?? "–"),
      el("td", { class: "value" }, r.model), el("td", { class: r.change && r.change.endsWith("(better)") ? "ok" : r.change && r.change.endsWith("(worse)") ? "bad" : "" }, r.change ?? ""))));
  $("eval-report-box").hidden = !s.report;
  $("eval-report").src = s.report ? "api/evals/report?" + query({ dir: s.dir }) : "about:blank";
  await loadEvalSamples();
}

async function loadEvalSamples() {
  const page = await api("GET", "api/evals/samples?" + query({ dir: evals.dir, offset: evals.offset, limit: evals.limit }));
  $("eval-range").textContent = page.total ? `${page.offset + 1}–${page.offset + page.samples.length} of ${page.total}` : "none";
  $("eval-prev").disabled = page.offset === 0;
  $("eval-next").disabled = page.offset + page.samples.length >= page.total;
  $("eval-samples").replaceChildren(...page.samples.map((s) => evalCard(s, page.has_baseline)));
}

function evalCard(s, hasBaseline) {
  const diff = el("pre", { class: "diff" });
  diff.innerHTML = s.diff_html;  // built and escaped by the report's own char_diff on the server
  const body = el("div", {},
    el("div", { class: "head" }, `${s.source} · ${s.kind} · score ${fmt(s.score)}` + (s.baseline ? ` (base ${fmt(s.baseline.score)})` : "")),
    el("div", { class: "label" }, "prompt"), el("pre", {}, s.prompt),
    el("div", { class: "label" }, "reference"), el("pre", { class: "reference" }, s.reference),
    el("div", { class: "answers" },
      el("div", {}, el("div", { class: "label" }, "base answer"),
        el("pre", { class: "base-answer" }, hasBaseline ? (s.baseline.error ? `(failed: ${s.baseline.error})` : s.baseline.prediction) : "(no baseline)")),
      el("div", {}, el("div", { class: "label" }, "fine-tuned answer"),
        el("pre", { class: "model-answer" }, s.error ? `(failed: ${s.error})` : s.prediction))),
    el("div", { class: "label" }, "diff, reference → fine-tuned"), diff);
  if (s.fields) {
    const mark = (ok) => (ok === null ? "" : ok ? " ✓" : " ✗");
    body.append(el("div", { class: "label" }, "fields"), el("table", { class: "fields" },
      el("tr", {}, ...["field", "reference", "base", "fine-tuned"].map((h) => el("th", {}, h))),
      ...s.fields.map((f) => el("tr", {}, el("td", {}, el("code", {}, f.field)), el("td", {}, f.reference ?? ""),
        el("td", { class: f.baseline_ok ? "ok" : f.baseline_ok === false ? "bad" : "" }, (f.baseline ?? "(missing)") + mark(f.baseline_ok)),
        el("td", { class: f.model_ok ? "ok" : "bad" }, (f.model ?? "(missing)") + mark(f.model_ok))))));
  }
  const image = el("img", { src: "api/evals/image?" + query({ dir: evals.dir, index: s.index }), alt: s.image_name });
  return el("div", { class: "eval-sample", dataset: { index: s.index } }, image, body);
}

$("eval-prev").addEventListener("click", () => { evals.offset = Math.max(0, evals.offset - evals.limit); loadEvalSamples(); });
$("eval-next").addEventListener("click", () => { evals.offset += evals.limit; loadEvalSamples(); });

// --- Try -------------------------------------------------------------------------------------------

async function showTry(params) {
  const result = await api("GET", "api/models");
  const select = $("try-model");
  const previous = params.get("model") || select.value || (result.loaded && result.loaded.model);
  select.replaceChildren(...result.models.map((m) => el("option", { value: m.model },
    `${m.model} — ${m.kind}` + (m.release && m.release.name ? `, ${m.release.title}` : ""))));
  if (previous) select.value = previous;
  if (result.loaded && result.loaded.model === select.value) showPlayground(result.loaded);
}

function showPlayground(loaded) {
  $("try-state").textContent = `loaded ${loaded.model} (${loaded.backend}, at most ${loaded.max_new_tokens} new tokens)`;
  const frame = $("try-frame");
  if (frame.getAttribute("src") !== loaded.url) frame.src = loaded.url;
  frame.hidden = false;
}

// the playground is served by this UI (same origin): fit the frame to its page
setInterval(() => {
  const frame = $("try-frame");
  const doc = !frame.hidden && frame.contentDocument;
  if (doc && doc.documentElement) frame.style.height = `${Math.max(400, doc.documentElement.scrollHeight + 4)}px`;
}, 500);

$("try-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  showError($("try-error"), null);
  $("try-state").textContent = "loading the model…";
  try {
    const loaded = await api("POST", "api/try/load", { model: $("try-model").value, max_new_tokens: Number($("try-max").value) || 256 });
    showPlayground(loaded);
  } catch (error) {
    $("try-state").textContent = "";
    showError($("try-error"), error);
  }
});

// --- the router ------------------------------------------------------------------------------------

const PAGES = { data: showData, plan: showPlan, runs: showRuns, eval: showEval, try: showTry };

function currentPage() {
  const name = location.hash.slice(1).split("?")[0];
  return PAGES[name] ? name : "data";
}

async function route() {
  const name = currentPage();
  const params = new URLSearchParams(location.hash.split("?")[1] || "");
  document.querySelectorAll(".page").forEach((page) => { page.hidden = page.id !== `page-${name}`; });
  document.querySelectorAll("#tabs a").forEach((a) => a.classList.toggle("active", a.dataset.page === name));
  try { await PAGES[name](params); } catch (error) { if (!(error instanceof ApiError && error.status === 401)) console.error(error); }
}

function loadInfo() {
  api("GET", "api/info").then((info) => {
    $("workdir").textContent = `workdir ${info.workdir}` + (info.allowed.length ? ` · reads ${info.allowed.join(", ")}` : "");
  }).catch(() => {});
}

window.addEventListener("hashchange", route);
loadInfo();
route();
