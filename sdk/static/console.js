// The edgesight console: one tab per task, each calling the server's own POST /v1/<task> route.
// Plain browser JavaScript, no build step, no third-party code; server data is only ever set as text.
"use strict";

const KEY = "edgesight.apiKey";        // sessionStorage: the key lives as long as the browser tab
const TASKS = ["keywords", "describe", "caption", "products"];
const state = { current: null, health: null, models: {}, images: {}, busy: {}, thumbs: [] };

const $ = (selector, root = document) => root.querySelector(selector);

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (v == null || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const child of children.flat(Infinity)) if (child != null) node.append(child);
  return node;
}

function authHeaders(extra = {}) {
  const key = sessionStorage.getItem(KEY);
  return key ? { ...extra, Authorization: `Bearer ${key}` } : extra;
}

// fetch -> {ok, status, body, ms}; ms is the whole round trip (request, queue, inference, response).
async function api(path, options = {}) {
  const t0 = performance.now();
  let res, text;
  try {
    res = await fetch(path, { ...options, headers: authHeaders(options.headers) });
    text = await res.text();
  } catch (err) {
    return { ok: false, status: 0, ms: performance.now() - t0,
             body: { error: `the server did not answer (${err.message})`, type: "NetworkError" } };
  }
  const ms = performance.now() - t0;
  let body;
  try { body = JSON.parse(text); } catch { body = { error: text.slice(0, 300) || res.statusText, type: `HTTP ${res.status}` }; }
  return { ok: res.ok, status: res.status, body, ms };
}

async function fetchBlob(path) {
  const res = await fetch(path, { headers: authHeaders() });
  if (!res.ok) throw new Error(`${res.status} ${path}`);
  return res.blob();
}

const base64Of = (blob) => new Promise((resolve, reject) => {
  const reader = new FileReader();
  reader.onload = () => resolve(String(reader.result).split(",", 2)[1] || "");
  reader.onerror = () => reject(new Error("the file could not be read"));
  reader.readAsDataURL(blob);
});

// JSON for the describe editor: one key a line, list items one a line, each item on one line.
// (Real newlines only ever come from JSON.stringify's layout, never from inside a string, so joining them is safe.)
const oneLine = (v) => JSON.stringify(v, null, 1).replace(/\n\s*/g, " ").replace(/^([[{]) /, "$1").replace(/ ([\]}])$/, "$1");
const list = (items, pad) => `[\n${items.map((x) => pad + "  " + oneLine(x)).join(",\n")}\n${pad}]`;
function pretty(value) {
  if (Array.isArray(value)) return value.length ? list(value, "") : "[]";
  if (value === null || typeof value !== "object") return oneLine(value);
  const rows = Object.entries(value).map(([k, v]) =>
    `  ${JSON.stringify(k)}: ${Array.isArray(v) && v.length ? list(v, "  ") : oneLine(v)}`);
  return rows.length ? `{\n${rows.join(",\n")}\n}` : "{}";
}

// ---------------------------------------------------------------------------------- server state
async function refresh() {
  const health = await api("/health");
  state.health = health.ok ? health.body : null;
  const models = await api("/v1/models");
  state.models = models.ok ? models.body : {};
  showServer(health, models);
  for (const task of TASKS) {
    const out = $(`#out-${task}`);
    if (out.dataset.state === "idle") idle(task);
    $(`#tab-${task}`).classList.toggle("unavailable", !!(state.health && state.health.tasks[task] !== "ready"));
  }
  if (models.ok) await loadSamples();
}

function showServer(health, models) {
  const box = $("#server"), text = $("#server-text"), keyInput = $("#api-key");
  keyInput.placeholder = health.ok && health.body.auth ? "required" : "none set";
  keyInput.classList.toggle("needed", models.status === 401);
  if (!health.ok) {
    box.dataset.state = "down";
    text.textContent = `server unreachable: ${health.body.error}`;
  } else if (models.status === 401) {
    box.dataset.state = "warn";
    text.textContent = "API key required";
  } else {
    const tasks = health.body.tasks, ready = TASKS.filter((t) => tasks[t] === "ready").length;
    box.dataset.state = ready === TASKS.length ? "ok" : ready ? "warn" : "down";
    text.textContent = `${ready} of ${TASKS.length} tasks ready`;
  }
}

async function loadSamples() {
  const r = await api("/ui/samples");
  if (!r.ok) return;
  for (const box of document.querySelectorAll(".samples")) box.replaceChildren();
  const add = (task, label, title, onclick) => {
    const box = $(`#panel-${task} .samples`);
    if (!box.childElementCount) box.append(el("span", { class: "samples-label", text: "Samples" }));
    const button = el("button", { type: "button", class: "sample", title, text: label });
    button.addEventListener("click", onclick);
    box.append(button);
  };
  for (const prompt of r.body.keywords?.samples || []) {
    add("keywords", prompt.length > 42 ? prompt.slice(0, 40) + "…" : prompt, prompt, () => { $("#kw-prompt").value = prompt; });
  }
  (r.body.describe?.samples || []).forEach((sample, i) => {
    const text = pretty(sample);
    add("describe", `Sample ${i + 1}`, text, () => { $("#ds-input").value = text; });
  });
  const prompt = $("#kw-prompt"), detector = $("#ds-input"), first = r.body.describe?.samples?.[0];
  if (!prompt.value && r.body.keywords?.samples?.length) prompt.value = r.body.keywords.samples[0];
  if (!detector.value && first) detector.value = pretty(first);
  for (const task of ["caption", "products"]) {
    (r.body[task]?.samples || []).forEach((name, i) => add(task, name, `the server's sample image ${name}`, async () => {
      try { setImage(task, await fetchBlob(`/ui/samples/${task}/${i}`), name); }
      catch (err) { showError(task, { status: 0, body: { error: `sample image: ${err.message}`, type: "NetworkError" } }); }
    }));
  }
}

// ---------------------------------------------------------------------------------- tabs
function select(task) {
  if (!TASKS.includes(task)) task = TASKS[0];
  state.current = task;
  for (const t of TASKS) {
    const on = t === task;
    $(`#panel-${t}`).hidden = !on;
    $(`#tab-${t}`).setAttribute("aria-selected", on);
    $(`#tab-${t}`).tabIndex = on ? 0 : -1;
  }
  if (location.hash !== `#${task}`) history.replaceState(null, "", `#${task}`);
}

// ---------------------------------------------------------------------------------- requests per task
const bodies = {
  keywords() {
    const payload = { prompt: $("#kw-prompt").value };
    const vocab = $("#kw-vocab").value.trim();
    if (vocab) payload.vocabulary = vocab === "objects365" ? vocab : vocab.split(",").map((v) => v.trim()).filter(Boolean);
    return JSON.stringify(payload);
  },
  describe() { return $("#ds-input").value; },          // sent as typed: a JSON mistake gets the server's reason
  caption() { return imageBody("caption"); },
  products() { return imageBody("products"); },
};

async function imageBody(task) {
  const image = state.images[task];
  if (!image) throw new Error("choose or drop a photo first");
  return JSON.stringify({ image: await base64Of(image.blob) });
}

async function run(task) {
  if (state.busy[task]) return;
  const out = $(`#out-${task}`), button = $(`#panel-${task} .run`);
  let body;
  try { body = await bodies[task](); } catch (err) {
    showError(task, { status: 0, ms: null, body: { error: err.message, type: "InputError" } });
    return;
  }
  state.busy[task] = true;
  button.disabled = true;
  out.dataset.state = "running";
  out.replaceChildren(head(task, null), el("div", { class: "progress" }, el("span")));
  const r = await api(`/v1/${task}`, { method: "POST", headers: { "Content-Type": "application/json" }, body });
  state.busy[task] = false;
  button.disabled = false;
  if (!r.ok) return showError(task, r);
  out.dataset.state = "done";
  out.replaceChildren(head(task, r.ms), el("div", { class: "result" }, render[task](r.body)), raw(r.body));
}

function head(task, ms) {
  const info = state.models[task] || {};
  const item = (field, label, value) => el("span", { class: "meta-item", "data-field": field },
    el("span", { class: "k", text: label }), el("span", { class: "v", text: value ?? "—" }));
  const backend = info.backend ? `${info.backend}${info.device ? ` · ${info.device}` : ""}` : null;
  return el("div", { class: "out-head" },
    el("h3", { text: "Answer" }),
    el("div", { class: "meta" },
      item("latency", "latency", ms == null ? "…" : `${Math.round(ms)} ms`),
      item("bundle", "bundle", info.bundle), item("precision", "precision", info.precision),
      item("backend", "backend", backend)));
}

function raw(body) {
  return el("details", { class: "raw" }, el("summary", { text: "Response JSON" }),
    el("pre", { text: JSON.stringify(body, null, 2) }));
}

function showError(task, r) {
  const out = $(`#out-${task}`), status = r.status ? `${r.status} ` : "";
  out.dataset.state = "error";
  const box = el("div", { class: "error", role: "alert" },
    el("div", { class: "error-title", text: `${status}${r.body.type || "Error"}` }),
    el("div", { class: "error-message", text: r.body.error || JSON.stringify(r.body) }));
  if (r.status === 401) {
    box.append(el("div", { class: "error-hint", text: "Enter the server's API key at the top right." }));
    $("#api-key").classList.add("needed");
    $("#api-key").focus();
  }
  out.replaceChildren(head(task, r.ms), box);
}

function idle(task) {
  const out = $(`#out-${task}`), why = state.health?.tasks?.[task];
  out.replaceChildren(head(task, null), why && why !== "ready"
    ? el("div", { class: "error", role: "status" }, el("div", { class: "error-title", text: "Task not loaded" }),
         el("div", { class: "error-message", text: why }))
    : el("p", { class: "placeholder", text: "Run the task to see its answer here." }));
}

// ---------------------------------------------------------------------------------- answers
const CHECK_NAMES = { invented: "nothing invented" };   // describe's checks read as "passed: <name>"
const fixed = (x, n) => (typeof x === "number" ? x.toFixed(n) : "—");

function bars(rows, cls) {   // [[label, value]] -> horizontal bars scaled to the largest value
  const top = Math.max(...rows.map((r) => r[1]), 1e-9);
  return el("div", { class: `bars ${cls}` }, rows.map(([label, value]) => {
    const fill = el("span");
    fill.style.width = `${Math.max(2, (100 * value) / top)}%`;
    return el("div", { class: "bar-row" }, el("span", { class: "bar-label", text: label }),
      el("span", { class: "bar" }, fill), el("span", { class: "bar-value", text: fixed(value, 3) }));
  }));
}

const render = {
  keywords(words) {
    if (!words.length) return el("p", { class: "placeholder", text: "No object names in this prompt." });
    return el("div", { class: "chips" }, words.map((w) => el("span", { class: "chip", text: w })));
  },

  describe(d) {
    const checks = Object.entries(d.checks || {}).map(([name, ok]) =>
      el("span", { class: `check ${ok ? "ok" : "bad"}`, text: `${ok ? "✓" : "✗"} ${CHECK_NAMES[name] || name}` }));
    return [
      el("p", { class: "sentence", text: d.text }),
      el("h4", { text: "Checks" }),
      el("div", { class: "checks" }, d.fallback ? el("span", { class: "check warn", text: "template fallback" }) : null, checks),
      d.generated && d.generated !== d.text ? el("p", { class: "muted small", text: `model wrote: ${d.generated}` }) : null,
      d.problems?.length ? el("ul", { class: "problems" }, d.problems.map((p) => el("li", { text: String(p) }))) : null,
    ];
  },

  caption(c) {
    return [
      el("p", { class: "sentence caption", text: c.caption }),
      c.tags?.length ? [el("h4", { text: "Tags" }), bars(c.tags, "tags")] : null,
      c.samples?.length ? [el("h4", { text: "Sampled captions" }),
        el("ol", { class: "sample-captions" }, c.samples.map((s) => el("li", { text: s })))] : null,
    ];
  },

  products(p) {
    state.thumbs.forEach((url) => URL.revokeObjectURL(url));   // the previous answer's thumbnails
    state.thumbs = [];
    const verdict = p.unknown
      ? el("div", { class: "verdict unknown" }, el("div", { class: "verdict-title", text: "Not in the catalogue" }),
          el("div", { class: "reason", text: p.unknown_reason || "unknown" }))
      : el("div", { class: "verdict" }, el("div", { class: "verdict-title", text: p.title }),
          el("div", { class: "verdict-sub" }, el("span", { class: "category", text: p.category || "no category" }),
            el("span", { class: "price", text: p.price == null ? "no price" : fixed(p.price, 2) })));
    const est = p.price_estimate;
    const estimate = est && el("div", { class: "estimate" }, el("span", { class: "k", text: "Price estimate" }),
      el("span", { class: "estimate-value", text: fixed(est.value, 2) }),
      el("span", { class: "muted", text: `range ${fixed(est.low, 2)} – ${fixed(est.high, 2)} over ${est.neighbours} nearest` }));
    const ocr = p.ocr && el("div", { class: "ocr" }, el("span", { class: "k", text: "Label text" }),
      el("span", { text: p.ocr.text.join(" · ") || "none read" }),
      p.ocr.price != null ? el("span", { class: "muted", text: `printed price ${fixed(p.ocr.price, 2)}` }) : null);
    const matches = el("ol", { class: "matches" }, p.matches.map((m) => {
      const img = el("img", { class: "thumb", alt: "" });
      fetchBlob(`/ui/catalog-photo?title=${encodeURIComponent(m.title)}`)
        .then((b) => { img.src = URL.createObjectURL(b); state.thumbs.push(img.src); img.alt = m.title; }, () => img.classList.add("missing"));
      const fill = el("span");
      fill.style.width = `${Math.max(2, 100 * Math.max(0, m.similarity))}%`;
      return el("li", { class: "match" }, img,
        el("div", { class: "match-body" }, el("div", { class: "match-title", text: m.title }),
          el("div", { class: "muted small" }, el("span", { class: "match-category", text: m.category || "" }),
            el("span", { class: "match-price", text: m.price == null ? "" : fixed(m.price, 2) })),
          el("div", { class: "similarity" }, el("span", { class: "bar" }, fill),
            el("span", { class: "match-score", text: fixed(m.similarity, 3) }))));
    }));
    return [verdict, estimate, ocr, el("h4", { text: "Nearest catalogue products" }), matches];
  },
};

// ---------------------------------------------------------------------------------- images
function setImage(task, blob, name) {
  state.images[task] = { blob, name };
  const panel = $(`#panel-${task}`), preview = $(".preview", panel);
  if (preview.src.startsWith("blob:")) URL.revokeObjectURL(preview.src);
  preview.src = URL.createObjectURL(blob);
  preview.hidden = false;
  $(".drop", panel).classList.add("has-image");
  $(".file-name", panel).textContent = name;
  $(".run", panel).disabled = false;
  run(task);
}

function wireImage(task) {
  const slot = $(`#panel-${task} .image-input`);
  slot.replaceWith($("#image-input").content.cloneNode(true));
  const drop = $(`#panel-${task} .drop`), input = $("input", drop);
  input.id = drop.htmlFor = slot.dataset.id;
  input.addEventListener("change", () => { if (input.files[0]) setImage(task, input.files[0], input.files[0].name); });
  for (const type of ["dragenter", "dragover"]) drop.addEventListener(type, (e) => { e.preventDefault(); drop.classList.add("over"); });
  for (const type of ["dragleave", "drop"]) drop.addEventListener(type, () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    const file = e.dataTransfer.files[0];
    if (file) setImage(task, file, file.name);
  });
}

// ---------------------------------------------------------------------------------- start
document.addEventListener("DOMContentLoaded", () => {
  for (const form of document.querySelectorAll("form.input")) {
    form.addEventListener("submit", (e) => { e.preventDefault(); run(form.dataset.task); });
  }
  for (const tab of document.querySelectorAll("[role=tab]")) tab.addEventListener("click", () => select(tab.dataset.task));
  $("nav.tabs").addEventListener("keydown", (e) => {
    const step = { ArrowRight: 1, ArrowLeft: -1 }[e.key];
    if (!step) return;
    const next = TASKS[(TASKS.indexOf(state.current) + step + TASKS.length) % TASKS.length];
    select(next);
    $(`#tab-${next}`).focus();
  });
  document.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) { e.preventDefault(); run(state.current); }
  });
  $("#ds-format").addEventListener("click", () => {
    try { $("#ds-input").value = pretty(JSON.parse($("#ds-input").value)); }
    catch (err) { showError("describe", { status: 0, ms: null, body: { error: `not valid JSON: ${err.message}`, type: "InputError" } }); }
  });
  wireImage("caption");
  wireImage("products");
  const key = $("#api-key");
  key.value = sessionStorage.getItem(KEY) || "";
  $("#key-form").addEventListener("submit", (e) => {
    e.preventDefault();
    if (key.value.trim()) sessionStorage.setItem(KEY, key.value.trim()); else sessionStorage.removeItem(KEY);
    key.classList.remove("needed");
    refresh();
  });
  window.addEventListener("hashchange", () => select(location.hash.slice(1)));
  select(location.hash.slice(1));
  refresh();
});
