// The playground: one form, posted as multipart to /ocr or /extract; no build step, no CDN.
"use strict";

const $ = (id) => document.getElementById(id);
const task = () => document.querySelector('input[name="task"]:checked').value;

function headers() {
  const key = $("api-key").value.trim();
  return key ? { Authorization: "Bearer " + key } : {};
}

function show(state, { result = "", raw = "", prompt = "", latency = "", error = "" } = {}) {
  $("output").dataset.state = state;
  $("result").textContent = result;
  $("raw").textContent = raw;
  $("prompt").textContent = prompt;
  $("latency").textContent = latency;
  $("error").textContent = error;
  $("error").hidden = !error;
}

async function run(event) {
  event.preventDefault();
  const file = $("image").files[0];
  if (!file) return show("error", { error: "Choose an image first." });
  const form = new FormData();
  form.append("image", file);
  let route = "ocr";  // relative: the page also runs under a prefix (the ui's Try page)
  if (task() === "kie") {
    route = "extract";
    const query = $("query").value.trim();
    if (query) form.append("query", query);
    else form.append("fields", $("fields").value);
    if ($("strict").checked) form.append("strict", "true");
  } else {
    form.append("prompt", task());
  }
  const cap = $("max-new-tokens").value;
  if (cap) form.append("max_new_tokens", cap);

  show("running", { latency: "running…" });
  $("run").disabled = true;
  const start = performance.now();
  try {
    const response = await fetch(route, { method: "POST", body: form, headers: headers() });
    const body = await response.json().catch(() => ({}));
    const roundTrip = Math.round(performance.now() - start);
    if (!response.ok) {
      const message = (body.error && body.error.message) || response.statusText;
      return show("error", { error: `${response.status}: ${message}`, latency: `${roundTrip} ms` });
    }
    const result = route === "extract"
      ? (body.fields === null ? "(the answer is not a JSON object: see the raw output)" : JSON.stringify(body.fields, null, 2))
      : body.text;
    show("done", {
      result, raw: body.text, prompt: body.prompt,
      latency: `${body.latency_ms} ms in the server · ${roundTrip} ms round trip`,
    });
  } catch (err) {
    show("error", { error: `request failed: ${err}` });
  } finally {
    $("run").disabled = false;
  }
}

$("image").addEventListener("change", () => {
  const file = $("image").files[0];
  if (!file) return;
  $("preview").src = URL.createObjectURL(file);
  $("preview").hidden = false;
  $("drop-hint").textContent = file.name;
});
document.querySelectorAll('input[name="task"]').forEach((radio) =>
  radio.addEventListener("change", () => { $("kie").hidden = task() !== "kie"; }));
$("request").addEventListener("submit", run);

fetch("health").then((r) => r.json()).then((h) => {
  $("model").textContent = `${h.model} · ${h.backend} backend`;
}).catch(() => { $("model").textContent = "server not reachable"; });
