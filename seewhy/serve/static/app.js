// seewhy serve: the page's behaviour. Plain JavaScript, no framework, no build step.
// Talks only to the HTTP API of seewhy/serve/app.py (routes and fields: README, "seewhy serve").
"use strict";

const state = {
  image: null,        // the chosen image as a Blob (File or a fetched bundled photo)
  imageName: "",
  imageUrl: null,     // object URL of the image (the preview)
  inputPng: null,     // the image as the model sees it (resized, cropped), from /api/predict: shown under the maps
  model: null,
  top: [],            // [{index, label, score}] from /api/predict
  target: null,       // the class index being explained
  results: new Map(), // method -> the /api/explain answer shown in its card
  runs: new Map(),    // method -> run id of its latest request (older answers are dropped)
  runCounter: 0,
};

const $ = (selector) => document.querySelector(selector);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  for (const child of children) node.append(child);
  return node;
}

// ---------------------------------------------------------------- messages

function showError(text) {
  const box = $("#message");
  const close = el("button", { type: "button", class: "close", "aria-label": "dismiss", text: "×" });
  const line = el("div", { class: "error" }, el("span", { text }), close);
  close.addEventListener("click", () => {
    line.remove();
    if (!box.children.length) box.hidden = true;
  });
  box.prepend(line);
  box.hidden = false;
}

function clearErrors() {
  const box = $("#message");
  box.replaceChildren();
  box.hidden = true;
}

// ---------------------------------------------------------------- HTTP

class ApiError extends Error {}

async function errorText(response) {
  // the API answers {"detail": "..."}; FastAPI's validation errors give a list of {loc, msg}
  let detail = "";
  try {
    const body = await response.clone().json();
    detail = body.detail ?? body;
    if (Array.isArray(detail)) {
      detail = detail.map((d) => (d.loc ? `${d.loc.join(".")}: ${d.msg}` : d.msg ?? JSON.stringify(d))).join("; ");
    } else if (typeof detail !== "string") {
      detail = JSON.stringify(detail);
    }
  } catch {
    detail = (await response.text()).slice(0, 300);
  }
  return `${response.status} ${response.statusText}${detail ? ": " + detail : ""}`;
}

// fetch with the API's error convention; a full queue (503 + Retry-After) is retried a few times
async function api(path, { form = null, what = path, onWait = null, raw = false } = {}) {
  for (let attempt = 0; ; attempt++) {
    let response;
    try {
      response = await fetch(path, form ? { method: "POST", body: form } : {});
    } catch (err) {
      throw new ApiError(`${what}: the server did not answer (${err.message})`);
    }
    if (response.status === 503 && attempt < 3) {
      const wait = Math.min(Number(response.headers.get("Retry-After")) || 1, 30);
      if (onWait) onWait(`queue full, retrying in ${wait} s`);
      await new Promise((resolve) => setTimeout(resolve, wait * 1000));
      continue;
    }
    if (!response.ok) throw new ApiError(`${what}: ${await errorText(response)}`);
    return raw ? response : response.json();
  }
}

function imageForm(fields = {}) {
  const form = new FormData();
  form.append("image", state.image, state.imageName || "image.png");
  form.append("model", state.model);
  for (const [key, value] of Object.entries(fields)) form.append(key, String(value));
  return form;
}

function report(err) {
  showError(err instanceof ApiError ? err.message : `unexpected error: ${err.message || err}`);
}

// ---------------------------------------------------------------- models, methods, bundled photos

async function loadModels() {
  const models = await api("/api/models", { what: "models" });
  const select = $("#model-select");
  select.replaceChildren(...models.map((m) => el("option", { value: m.name, text: `${m.name} (${m.input_size}px)` })));
  const describe = () => {
    const m = models.find((x) => x.name === select.value);
    $("#model-description").textContent = m ? m.description : "";
  };
  state.model = select.value || null;
  describe();
  select.addEventListener("change", () => {
    state.model = select.value;
    describe();
    clearMaps();
    loadLayers();
    loadMethods().catch(report);
    if (state.image) predict();
  });
}

function seconds(value) {
  const v = Number(value);
  return v < 0.01 ? "<0.01 s" : v < 1 ? `${v.toFixed(2)} s` : `${v.toFixed(1)} s`;
}

function formatCost(m) {
  const parts = [];
  if (m.cost) parts.push(m.cost);
  if (m.seconds != null) parts.push(`~${seconds(m.seconds)}`);
  return parts.join(" · ");
}

async function loadMethods() {
  // the cost estimates depend on the model
  const first = !$("#methods input.method");
  const chosen = new Set(first ? ["gradcam"] : selectedMethods()); // gradcam ticked on the first visit
  const box = $("#methods");
  if (!box.children.length) box.append(el("span", { class: "muted", text: "estimating each method's cost…" }));
  const query = state.model ? `?model=${encodeURIComponent(state.model)}` : "";
  const methods = await api(`/api/methods${query}`, { what: "methods" });
  const families = new Map();
  for (const m of methods) {
    if (!families.has(m.family)) families.set(m.family, []);
    families.get(m.family).push(m);
  }
  box.replaceChildren();
  for (const [family, members] of families) {
    const fieldset = el("fieldset", { class: "family" }, el("legend", { text: family }));
    for (const m of members) {
      const input = el("input", { type: "checkbox", class: "method", value: m.name });
      input.checked = chosen.has(m.name);
      input.addEventListener("change", updateButtons);
      fieldset.append(el("label", { class: "method-choice", title: m.description || "" },
        input, el("span", { class: "name", text: m.name }), el("span", { class: "cost", text: formatCost(m) })));
    }
    box.append(fieldset);
  }
}

async function loadBundled() {
  const images = await api("/api/images", { what: "bundled photos" });
  $("#bundled").replaceChildren(...images.map((img) => {
    const button = el("button", { type: "button", class: "bundled-image", title: img.name, "data-name": img.name },
      el("img", { src: img.url, alt: img.name, loading: "lazy" }),
      el("span", { text: img.name }));
    button.addEventListener("click", async () => {
      try {
        const response = await api(img.url, { what: `photo ${img.name}`, raw: true });
        const blob = await response.blob();
        setImage(blob, `${img.name}.${blob.type === "image/jpeg" ? "jpg" : "png"}`);
      } catch (err) { report(err); }
    });
    return button;
  }));
}

// ---------------------------------------------------------------- image and prediction

function setImage(blob, name) {
  state.image = blob;
  state.imageName = name;
  if (state.imageUrl) URL.revokeObjectURL(state.imageUrl);
  state.imageUrl = URL.createObjectURL(blob);
  const preview = $("#preview");
  preview.src = state.imageUrl;
  preview.hidden = false;
  $("#image-name").textContent = name;
  clearMaps();
  predict();
  const layer = $("#layer-select").value;
  if (layer) showLayer(layer);
}

async function predict() {
  const classes = $("#classes");
  classes.replaceChildren(el("span", { class: "muted", text: "predicting…" }));
  state.top = [];
  state.target = null;
  state.inputPng = null;
  const image = state.image;
  const model = state.model;
  const stale = () => state.image !== image || state.model !== model; // another image or model since
  updateButtons();
  try {
    const answer = await api("/api/predict", { form: imageForm(), what: "predict" });
    if (stale()) return;
    state.top = answer.top;
    state.inputPng = answer.input_png || null;
    classes.replaceChildren(...answer.top.map((c) => {
      const attrs = { type: "button", class: "class-button", "data-index": c.index, "aria-pressed": "false" };
      const button = el("button", attrs,
        el("span", { class: "label", text: c.label }),
        el("span", { class: "score", text: `${(c.score * 100).toFixed(1)}%` }));
      button.addEventListener("click", () => chooseClass(c.index));
      return button;
    }));
    selectClass(answer.top.length ? answer.top[0].index : null);
  } catch (err) {
    if (stale()) return;
    classes.replaceChildren();
    report(err);
  }
  updateButtons();
}

function selectClass(index) {
  state.target = index;
  for (const button of document.querySelectorAll("#classes .class-button")) {
    button.setAttribute("aria-pressed", String(Number(button.dataset.index) === index));
  }
}

function chooseClass(index) {
  selectClass(index);
  // re-explain every selected method (and every map on show) for this class
  const methods = new Set([...selectedMethods(), ...state.results.keys()]);
  if (methods.size) explainAll([...methods]);
}

// ---------------------------------------------------------------- explanations

function selectedMethods() {
  return [...document.querySelectorAll("#methods input.method:checked")].map((input) => input.value);
}

function updateButtons() {
  const ready = state.image && state.model && state.target != null;
  const chosen = selectedMethods().length > 0;
  $("#explain-button").disabled = !(ready && chosen);
  $("#explain-note").textContent = !state.image ? "Choose an image and at least one method."
    : state.target == null ? "Waiting for the prediction…"
    : !chosen ? "Choose at least one method." : "";
  const shown = state.results.size > 0;
  $("#metrics-button").disabled = !shown;
  const link = $("#report-link");
  link.classList.toggle("disabled", !shown);
  link.setAttribute("aria-disabled", String(!shown));
}

function clearMaps() {
  state.results.clear();
  state.runs.clear();
  $("#maps").replaceChildren();
  updateButtons();
}

function card(method) {
  let node = document.querySelector(`#maps .map-card[data-method="${CSS.escape(method)}"]`);
  if (!node) {
    node = el("article", { class: "map-card", "data-method": method },
      el("h3", { text: method }),
      el("p", { class: "caption muted" }),
      el("div", { class: "frame" }),
      el("p", { class: "status" }),
      el("ol", { class: "steps", title: "the heatmap's post-processing steps" }),
      el("ul", { class: "warnings" }),
      el("p", { class: "metrics" }));
    $("#maps").append(node);
  }
  return node;
}

function explainAll(methods) {
  // one request per method, all at once; each card fills in when its answer arrives
  return Promise.allSettled(methods.map((method) => explainOne(method)));
}

async function explainOne(method) {
  const run = ++state.runCounter;
  state.runs.set(method, run);
  const target = state.target;
  const node = card(method);
  node.classList.add("running");
  node.classList.remove("failed");
  node.querySelector(".metrics").textContent = "";
  const status = node.querySelector(".status");
  const started = performance.now();
  const label = (state.top.find((c) => c.index === target) || {}).label || `class ${target}`;
  let waiting = ""; // set while a full queue makes the request wait
  const tick = () => {
    const elapsed = ((performance.now() - started) / 1000).toFixed(1);
    status.textContent = `${waiting || `running for ${label}…`} ${elapsed} s`;
  };
  tick();
  const timer = setInterval(tick, 200);
  try {
    const answer = await api("/api/explain", {
      form: imageForm({ method, target, colormap: $("#colormap").value }),
      what: `explain ${method}`,
      onWait: (text) => { waiting = text; },
    });
    if (state.runs.get(method) !== run) return; // a newer request for this method superseded this one
    state.results.set(method, answer);
    showMap(node, answer);
  } catch (err) {
    if (state.runs.get(method) !== run) return;
    state.results.delete(method); // an older map would now be mistaken for this request's
    node.querySelector(".frame").replaceChildren();
    node.querySelector(".steps").replaceChildren();
    node.querySelector(".warnings").replaceChildren();
    node.classList.add("failed");
    status.textContent = "failed (see the message above)";
    report(err);
  } finally {
    clearInterval(timer);
    if (state.runs.get(method) === run) node.classList.remove("running");
    updateButtons();
  }
}

function mapSource(answer) {
  return $("#raw-toggle").checked ? answer.raw_png : answer.heatmap_png || answer.overlay_png;
}

function showMap(node, answer) {
  node.dataset.target = answer.target;
  const [h, w] = answer.size || [0, 0];
  const named = answer.label && answer.label !== `class ${answer.target}`;
  const which = named ? `${answer.label} (class ${answer.target}, ` : `class ${answer.target} (`;
  node.querySelector(".caption").textContent =
    `${which}p = ${Number(answer.score).toFixed(3)}) · ${seconds(answer.seconds)}`;
  const frame = node.querySelector(".frame");
  // under the heatmap, the image as the model saw it (input_png of /api/predict); else the upload, cropped to the
  // map's aspect ratio (exact only when the model's preprocessing crops the whole shorter side)
  const base = el("img", { class: "base", alt: "", src: answer.input_png || state.inputPng || state.imageUrl });
  const map = el("img", { class: "map", alt: `${answer.method} map for ${answer.label}`, src: mapSource(answer) });
  map.style.opacity = String($("#opacity").value / 100);
  if (w && h) frame.style.aspectRatio = `${w} / ${h}`;
  frame.classList.toggle("pixelated", Math.max(w, h) > 0 && Math.max(w, h) < 128);
  frame.replaceChildren(base, map);
  node.querySelector(".status").textContent = "";
  node.querySelector(".steps").replaceChildren(...(answer.steps || []).map((s) => el("li", { text: s })));
  node.querySelector(".warnings").replaceChildren(...(answer.warnings || []).map((w) => el("li", { text: w })));
}

function applyOpacity() {
  const value = $("#opacity").value;
  $("#opacity-value").textContent = `${value}%`;
  for (const img of document.querySelectorAll("#maps img.map")) img.style.opacity = String(value / 100);
}

function applyRaw() {
  for (const [method, answer] of state.results) {
    const img = card(method).querySelector("img.map");
    if (img) img.src = mapSource(answer);
  }
}

// ---------------------------------------------------------------- metrics and report

async function runMetrics() {
  const button = $("#metrics-button");
  button.disabled = true;
  await Promise.allSettled([...state.results.entries()].map(async ([method, answer]) => {
    const out = card(method).querySelector(".metrics");
    out.textContent = "deletion / insertion: running…";
    try {
      const m = await api("/api/metrics", {
        form: imageForm({ method, target: answer.target }), what: `metrics ${method}`,
        onWait: (text) => { out.textContent = `deletion / insertion: ${text}`; },
      });
      const auc = (v) => (v == null ? "n/a" : Number(v).toFixed(3));
      out.replaceChildren(
        el("span", { title: "area under the deletion curve: lower is better", text: `deletion ${auc(m.deletion)}` }),
        " · ",
        el("span", { title: "area under the insertion curve: higher is better",
                     text: `insertion ${auc(m.insertion)}` }),
        el("span", { class: "muted", text: ` (${seconds(m.seconds)})` }));
    } catch (err) {
      out.textContent = "deletion / insertion: failed";
      report(err);
    }
  }));
  updateButtons();
}

function filenameOf(response, fallback) {
  const header = response.headers.get("Content-Disposition") || "";
  const match = /filename\*?=(?:UTF-8'')?"?([^";]+)"?/i.exec(header);
  return match ? decodeURIComponent(match[1]) : fallback;
}

async function downloadReport(event) {
  event.preventDefault();
  const link = $("#report-link");
  if (link.getAttribute("aria-disabled") === "true" || link.classList.contains("busy")) return;
  const methods = [...state.results.keys()];
  const target = state.results.get(methods[0]).target;
  link.classList.add("busy");
  const text = link.textContent;
  link.textContent = "Writing the report…";
  try {
    const response = await api("/api/report", {
      form: imageForm({ methods: methods.join(","), target }), what: "report", raw: true,
    });
    const blob = new Blob([await response.blob()], { type: "text/html" });
    const url = URL.createObjectURL(blob);
    const a = el("a", { href: url, download: filenameOf(response, "seewhy-report.html"), hidden: "" });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60000);
  } catch (err) {
    report(err);
  } finally {
    link.classList.remove("busy");
    link.textContent = text;
  }
}

// ---------------------------------------------------------------- layer browser

async function loadLayers() {
  const select = $("#layer-select");
  select.replaceChildren(el("option", { value: "", text: "choose a layer" }));
  $("#layer-grid").hidden = true;
  $("#layer-channels").replaceChildren();
  if (!state.model) return;
  try {
    const layers = await api(`/api/layers?model=${encodeURIComponent(state.model)}`, { what: "layers" });
    select.append(...layers.map((l) => el("option", { value: l.name, text: `${l.name}  (${l.shape.join("×")})` })));
  } catch (err) { report(err); }
}

async function showLayer(layer) {
  const grid = $("#layer-grid");
  const status = $("#layer-status");
  if (!layer) { grid.hidden = true; return; }
  if (!state.image) { status.textContent = "choose an image first"; return; }
  status.textContent = "computing feature maps…";
  try {
    const answer = await api("/api/layer", {
      form: imageForm({ layer, top: 16 }), what: `layer ${layer}`,
      onWait: (text) => { status.textContent = text; },
    });
    if ($("#layer-select").value !== layer) return; // another layer was picked meanwhile
    grid.src = answer.grid_png;
    grid.hidden = false;
    const n = answer.channels.length;
    status.textContent = `${answer.layer}: ${answer.shape.join("×")}; the ${n} channels with the highest mean`;
    const items = answer.channels.map((c) => el("li", {},
      el("button", { type: "button", class: "unit-button", "data-unit": String(c.index),
                     onclick: () => showUnit(layer, c.index) },
         `channel ${c.index}`), ` mean ${Number(c.mean).toFixed(3)}`));
    $("#layer-channels").replaceChildren(...items);
    $("#unit-patches").replaceChildren();
  } catch (err) {
    status.textContent = "";
    report(err);
  }
}

// A unit's top patches: its receptive-field crops where it fires most among the bundled photos and their crops.
async function showUnit(layer, unit) {
  const box = $("#unit-patches");
  box.replaceChildren(el("p", { class: "muted", text: `finding the top patches of channel ${unit}…` }));
  try {
    const form = new FormData();
    form.append("model", state.model);
    form.append("layer", layer);
    form.append("unit", String(unit));
    const answer = await api("/api/unit", { form, what: `top patches of ${layer} channel ${unit}` });
    if ($("#layer-select").value !== layer) return;
    const figures = answer.patches.map((p) => el("figure", {},
      el("img", { src: p.png, alt: `${p.image}: activation ${p.value}`, class: "patch" }),
      el("figcaption", { text: `${p.image} · ${Number(p.value).toFixed(2)}` })));
    box.replaceChildren(
      el("p", { class: "muted", text: `Channel ${unit} of ${layer}: where it fires most among ${answer.source}` }),
      el("div", { class: "patch-row" }, ...figures));
  } catch (err) {
    box.replaceChildren();
    report(err);
  }
}

// ---------------------------------------------------------------- wiring

function wireDrop() {
  const zone = $("#drop-zone");
  for (const type of ["dragenter", "dragover"]) {
    zone.addEventListener(type, (e) => { e.preventDefault(); zone.classList.add("over"); });
  }
  for (const type of ["dragleave", "drop"]) {
    zone.addEventListener(type, () => zone.classList.remove("over"));
  }
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    const file = e.dataTransfer.files[0];
    if (file) setImage(file, file.name);
  });
}

function init() {
  $("#image-input").addEventListener("change", (e) => {
    const file = e.target.files[0];
    if (file) setImage(file, file.name);
    e.target.value = ""; // choosing the same file again is a change too
  });
  wireDrop();
  $("#explain-button").addEventListener("click", () => { clearErrors(); explainAll(selectedMethods()); });
  $("#opacity").addEventListener("input", applyOpacity);
  $("#raw-toggle").addEventListener("change", applyRaw);
  $("#colormap").addEventListener("change", () => { if (state.results.size) explainAll([...state.results.keys()]); });
  $("#metrics-button").addEventListener("click", runMetrics);
  $("#report-link").addEventListener("click", downloadReport);
  $("#layer-select").addEventListener("change", (e) => showLayer(e.target.value));
  applyOpacity();
  Promise.allSettled([
    loadModels().then(() => Promise.allSettled([loadLayers(), loadMethods().catch(report)])),
    loadBundled(),
  ]).then((results) => {
    for (const r of results) if (r.status === "rejected") report(r.reason);
    updateButtons();
  });
}

document.addEventListener("DOMContentLoaded", init);
