// Wiring: the run form, tabs, theme, progress, errors, exports, comparison. Views draw; data.js
// talks to the server; state.js holds what the URL holds.
import * as headView from "./views/head.js";
import * as modelView from "./views/model.js";
import * as neuronView from "./views/neuron.js";
import { createTrace, deleteTrace, getViews, listModels, views } from "./data.js";
import { loadFromUrl, state, subscribe, update } from "./state.js";
import { signedColor } from "./colors.js";

const VIEWS = { head: headView, model: modelView, neuron: neuronView };
const $ = (id) => document.getElementById(id);
let busyCount = 0;
const traces = { a: null, b: null }; // TraceInfo of the main input and of the comparison
let runKey = "";

function showError(message) {
  $("error").textContent = message || "";
  $("error").hidden = !message;
}

async function busy(promise) {
  busyCount += 1;
  $("progress").hidden = false;
  try {
    return await promise;
  } finally {
    busyCount -= 1;
    $("progress").hidden = busyCount === 0;
  }
}

function makePane(id) {
  const root = $(id).querySelector(".view");
  const app = { state, update, busy };
  return { root, app, mounted: null, viewName: "" };
}
const panes = { a: makePane("pane-a"), b: makePane("pane-b") };

function mountView(pane, name) {
  if (pane.viewName === name) return pane.mounted;
  pane.root.replaceChildren();
  pane.mounted = VIEWS[name].mount(pane.root, pane.app);
  pane.viewName = name;
  return pane.mounted;
}

async function ensureTraces() {
  const key = JSON.stringify([state.model, state.text, state.pair, state.compare]);
  if (key === runKey && traces.a) return;
  runKey = key;
  const old = [traces.a, traces.b];
  traces.a = await busy(createTrace({ model: state.model, text: state.text, pair: state.pair }));
  traces.b = state.compare ? await busy(createTrace({ model: state.model, text: state.compare, pair: state.pair })) : null;
  for (const t of old) if (t) deleteTrace(t.traceId).catch(() => {});
  $("status").textContent = `${traces.a.seqLen} tokens · ${traces.a.numLayers} layers × ${traces.a.numHeads} heads · ${traces.a.model}`;
}

async function render() {
  document.documentElement.dataset.theme = state.theme;
  for (const tab of document.querySelectorAll("#tabs button")) tab.setAttribute("aria-selected", String(tab.dataset.view === state.view));
  $("text").value = state.text;
  $("pair").value = state.pair;
  $("compare").value = state.compare;
  if (state.model) $("model").value = state.model;
  if (!state.text) return;
  try {
    showError("");
    await ensureTraces();
    const comparing = Boolean(traces.b);
    $("pane-b").hidden = !comparing;
    $("difference").hidden = !comparing;
    for (const [id, trace] of [["pane-a", traces.a], ["pane-b", traces.b]]) {
      const title = $(id).querySelector(".pane-title");
      title.hidden = !comparing;
      if (trace) title.textContent = trace === traces.a ? state.text : state.compare;
    }
    await mountView(panes.a, state.view).render(traces.a);
    if (comparing) {
      await mountView(panes.b, state.view).render(traces.b);
      await drawDifference(traces.a, traces.b);
    }
  } catch (err) {
    runKey = "";
    showError(String(err.message || err));
  }
}

// Difference of the two inputs' pooled maps, every layer × head, on a common grid size.
async function drawDifference(a, b) {
  const size = Math.min(32, a.seqLen, b.seqLen);
  const [ra, rb] = await busy(Promise.all([getViews(a.traceId, [views.pooled(size)]), getViews(b.traceId, [views.pooled(size)])]));
  const pa = ra.tensors.pooled.data;
  const pb = rb.tensors.pooled.data;
  const layers = a.numLayers;
  const heads = a.numHeads;
  const cell = 40;
  const canvas = $("difference-canvas");
  canvas.width = heads * (cell + 4);
  canvas.height = layers * (cell + 4);
  const ctx = canvas.getContext("2d");
  let scale = 1e-9;
  for (let i = 0; i < pa.length; i++) scale = Math.max(scale, Math.abs(pa[i] - pb[i]));
  for (let l = 0; l < layers; l++) {
    for (let h = 0; h < heads; h++) {
      const base = (l * heads + h) * size * size;
      for (let r = 0; r < size; r++) {
        for (let c = 0; c < size; c++) {
          ctx.fillStyle = signedColor(pa[base + r * size + c] - pb[base + r * size + c], scale);
          const px = cell / size;
          ctx.fillRect(h * (cell + 4) + c * px, l * (cell + 4) + r * px, Math.ceil(px), Math.ceil(px));
        }
      }
    }
  }
}

function download(name, blob) {
  const a = document.createElement("a");
  a.href = URL.createObjectURL(blob);
  a.download = name;
  a.click();
  setTimeout(() => URL.revokeObjectURL(a.href), 1000);
}

function setupExports() {
  $("export-png").addEventListener("click", () => {
    const canvas = panes.a.mounted?.exportPng?.();
    if (canvas) canvas.toBlob((blob) => download(`attnscope-${state.view}.png`, blob));
  });
  $("export-svg").addEventListener("click", () => {
    const svg = state.view === "head" ? panes.a.mounted?.exportSvg?.() : null;
    if (!svg) return showError("SVG export is for the head view of inputs up to 256 tokens");
    download("attnscope-head.svg", new Blob([svg], { type: "image/svg+xml" }));
  });
  $("export-json").addEventListener("click", () => {
    const data = panes.a.mounted?.exportJson?.();
    if (data) download(`attnscope-${state.view}.json`, new Blob([JSON.stringify({ state: { ...state }, data })], { type: "application/json" }));
  });
}

async function init() {
  loadFromUrl(window.location.search, window.attnscopeEmbedded?.initialState || {});
  if (window.attnscopeEmbedded) {
    // A standalone file holds one input: its texts are shown, not edited.
    for (const id of ["text", "pair", "compare", "run"]) $(id).disabled = true;
  }
  document.documentElement.dataset.theme = state.theme;
  try {
    const models = await listModels();
    $("model").replaceChildren(...models.map((m) => new Option(m.name, m.name, false, m.name === state.model)));
    if (!state.model && models.length) state.model = models.find((m) => m.isDefault)?.name || models[0].name;
  } catch (err) {
    showError(String(err.message || err));
  }
  $("run-form").addEventListener("submit", (event) => {
    event.preventDefault();
    update({ model: $("model").value, text: $("text").value, pair: $("pair").value, compare: $("compare").value, query: -1 });
  });
  for (const tab of document.querySelectorAll("#tabs button")) tab.addEventListener("click", () => update({ view: tab.dataset.view }));
  $("theme").addEventListener("click", () => update({ theme: state.theme === "dark" ? "light" : "dark" }));
  setupExports();
  subscribe(render);
  window.addEventListener("resize", () => update({}));
  update({});
}

init();
