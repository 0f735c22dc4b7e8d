// Wiring: the run form, tabs, theme, progress, errors, exports, comparison. Views draw; data.js
// talks to the server; state.js holds what the URL holds.
//
// Every view stays mounted once shown (a tab switch hides it, keeping its DOM and loaded data), so
// switching tabs or themes redraws without asking the server again. A render is async (it may
// load); renders are counted, and one that finishes after a newer one started draws nothing.
import * as diffView from "./views/diff.js";
import * as headView from "./views/head.js";
import * as modelView from "./views/model.js";
import * as neuronView from "./views/neuron.js";
import { base64Of, createTrace, deleteTrace, getViews, onProgress, renormalizeViews, serverInfo, views } from "./data.js";
import { PNG_SCALE, pngCanvas, svgText, titleOf } from "./export.js";
import { installKeys } from "./keys.js";
import { framePending, generations, invalidate, loadFromUrl, state, subscribe, update } from "./state.js";

const VIEWS = { head: headView, model: modelView, neuron: neuronView };
// The text view reads the service's analysis views, which standalone files cannot answer: it is
// imported when first shown (files embed only the modules of the views they show).
const LAZY_VIEWS = { text: () => import("./views/text.js") };
const $ = (id) => document.getElementById(id);
const renders = generations();
let busyCount = 0;
let working = 0; // renders and views' own loads (tile, preview) under way
let traceRun = null; // { key, promise of { a, b } }: the TraceInfo of the main input and of the comparison
// The image picked for a model that takes images: { key, name, url, base64 }. Not in the URL (a
// link or a reload traces the text); while one is picked and the model takes images, Run traces it.
let picked = null;
let picking = null; // the promise of the pick being read
let picks = 0;
let showCount = () => {};

function showError(message) {
  $("error").textContent = message || "";
  $("error").hidden = !message;
}

// An error leaves no stale picture: the views, the difference map and the status line go until a
// render succeeds again.
function clearPictures() {
  $("panes").hidden = true;
  $("difference").hidden = true;
  $("status").textContent = "";
  shown = null;
}
let shown = null; // the KindInfo on screen (keyboard navigation and search read it)

// `promise`, counted as work under way (see window.attnscopeIdle).
async function track(promise) {
  working += 1;
  try {
    return await promise;
  } finally {
    working -= 1;
  }
}

function formatBytes(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / 1024 / 1024).toFixed(1)} MiB`;
}

// The progress line says what is arriving while views stream in ("3 of 9 tensors · 1.2 MiB"),
// and that the model runs otherwise.
onProgress((p) => {
  $("progress-text").textContent = p ? `${p.tensors} of ${p.of} tensors · ${formatBytes(p.bytes)}` : "running the model…";
});

// `promise`, with the progress line shown while it runs.
async function busy(promise) {
  busyCount += 1;
  $("progress").hidden = false;
  try {
    return await track(promise);
  } finally {
    busyCount -= 1;
    $("progress").hidden = busyCount === 0;
  }
}

// True when no frame is due and nothing is loading: the picture shows the state (tests wait on it).
window.attnscopeIdle = () => !framePending() && working === 0;

// What every view gets: the state, its setters, the progress and work wrappers, the error line,
// and the service's facts (ServerInfo, normalized by data.js; set before any view mounts).
const app = {
  state, update, invalidate, busy, track, server: null,
  fail: (err) => {
    showError(String(err.message || err));
    clearPictures();
  },
  shown: () => shown,
  // Whether the server's analysis views (head classes, sinks, renormalisation) can be asked for:
  // a standalone file (embedded.js) answers only the views it holds.
  analysis: () => !window.attnscopeEmbedded,
  // A layer's name: its number in the model (a file exported with a subset of layers, e.g.
  // bertviz's include_layers, keeps the model's numbers in `layerNumbers`), else its index.
  layerName: (l, kind = "") => {
    const numbers = window.attnscopeEmbedded?.layerNumbers;
    const list = numbers && (numbers[kind] || Object.values(numbers)[0]);
    return String(list?.[l] ?? l);
  },
  // A head's name: its number in the model (bertviz's include_heads keeps them in the embed's
  // initial state as `headNumbers`, entry i the model's number of embedded head i), else its index.
  headName: (h) => String(window.attnscopeEmbedded?.initialState?.headNumbers?.[h] ?? h),
};

function makePane(id) {
  return { root: $(id).querySelector(".view"), views: {} };
}
const panes = { a: makePane("pane-a"), b: makePane("pane-b") };
const difference = diffView.mount($("difference").querySelector(".view"), app); // shown when comparing

// The pane's view `name`, mounted on first use and shown; the pane's other views are hidden.
function viewOf(pane, name) {
  if (!pane.views[name]) {
    const el = document.createElement("div");
    el.className = "view-body";
    el.dataset.view = name;
    pane.root.append(el);
    pane.views[name] = { el, mounted: VIEWS[name].mount(el, app) };
  }
  for (const [n, v] of Object.entries(pane.views)) v.el.hidden = n !== name;
  return pane.views[name].mounted;
}

function modelInfo(name) {
  return app.server?.models.find((m) => m.name === name);
}

// The picked image, when the model named takes images (then it is traced instead of the text).
function imageFor(model) {
  return picked && modelInfo(model)?.takesImages ? picked : null;
}

// The input fields the chosen model takes: the image picker, and the texts unless it takes only images.
function showInputs() {
  const m = modelInfo($("model").value);
  const imageOnly = Boolean(m?.takesImages && !m.takesText);
  $("image").hidden = !m?.takesImages;
  $("image-clear").hidden = !(m?.takesImages && picked);
  for (const id of ["text", "pair", "compare"]) $(id).hidden = imageOnly;
  $("generate").hidden = !m?.canGenerate;
}

async function readPick(file) {
  const limit = app.server?.limits.maxImageBytes;
  if (limit && file.size > limit) throw new Error(`the image is ${file.size} bytes; this server accepts at most ${limit}`);
  const bytes = new Uint8Array(await file.arrayBuffer());
  if (picked) URL.revokeObjectURL(picked.url);
  picks += 1;
  picked = { key: picks, name: file.name, url: URL.createObjectURL(file), base64: base64Of(bytes) };
}

// `generate` new tokens after each text first, where the model can generate (0: none).
function tracesFor(model, text, pair, compare, generate) {
  const image = imageFor(model);
  const key = JSON.stringify(image ? [model, "image", image.key] : [model, text, pair, compare, generate]);
  if (traceRun?.key === key) return traceRun.promise;
  const old = traceRun;
  const promise = (async () => {
    if (image) {
      const a = await busy(createTrace({ model, image: image.base64 }));
      return { a: Object.assign(a, { image }), b: null }; // the head view draws it under the patches
    }
    const a = await busy(createTrace({ model, text, pair, generate }));
    const b = compare ? await busy(createTrace({ model, text: compare, pair, generate })) : null;
    return { a, b };
  })();
  traceRun = { key, promise };
  promise.catch(() => {
    if (traceRun?.promise === promise) traceRun = null; // the next render tries again
  });
  old?.promise.then(({ a, b }) => {
    for (const t of [a, b]) if (t) deleteTrace(t.traceId).catch(() => {});
  }, () => {});
  return promise;
}

function render() {
  return track(renderNow());
}

async function renderNow() {
  const generation = renders.start();
  const fresh = () => renders.isCurrent(generation);
  document.documentElement.dataset.theme = state.theme;
  for (const tab of document.querySelectorAll("#tabs button")) tab.setAttribute("aria-selected", String(tab.dataset.view === state.view));
  $("text").value = state.text;
  $("pair").value = state.pair;
  $("compare").value = state.compare;
  $("generate").value = state.generate > 0 ? String(state.generate) : "";
  $("sinks").checked = Boolean(state.sinks);
  if (state.model) $("model").value = state.model;
  showInputs();
  const model = modelInfo(state.model);
  if (!imageFor(state.model) && model && !model.takesText) {
    $("status").textContent = `${model.name} reads images: pick one, then Run`;
    return;
  }
  if (!state.text && !imageFor(state.model)) {
    showError("type a text to trace, then Run");
    clearPictures();
    return;
  }
  try {
    app.server = app.server || (await serverInfo());
    if (!fresh()) return;
    const generate = model?.canGenerate && state.generate > 0 ? state.generate : 0;
    const traced = await tracesFor(state.model, state.text, state.pair, state.compare, generate);
    if (!fresh()) return;
    // With the sinks toggle on, every view reads the attention with the trace's sinks left out and
    // each row renormalised (the request's Renormalize); `variant` keeps the views' caches apart.
    const sinks = Boolean(state.sinks) && app.analysis();
    renormalizeViews(sinks ? { sinksThreshold: SINKS_THRESHOLD } : null);
    const variant = sinks ? `/sinks${SINKS_THRESHOLD}` : "";
    const a = variant ? { ...traced.a, variant } : traced.a;
    const b = traced.b && variant ? { ...traced.b, variant } : traced.b;
    const excluded = sinks ? await excludedKeys(a) : null;
    if (!fresh()) return;
    showError("");
    $("panes").hidden = false;
    const k = a.kinds[0];
    shown = a.kind(state.kind);
    // An eager trace (dense output_attentions, for models outside AttentionInterface) says so.
    const method = a.method === "eager" ? " · eager attention (fallback)" : "";
    const grid = k.patchGrid ? ` (${k.patchGrid.rows}×${k.patchGrid.cols} patches of ${a.image ? a.image.name : "an image"})` : "";
    const versus = b ? ` · compared with “${clip(state.compare)}” (${b.kinds[0].queryLen} tokens)` : "";
    const split = a.promptLen ? ` (${a.promptLen} prompt + ${k.queryLen - a.promptLen} generated: “${clip(a.generatedText)}”)` : "";
    $("status").textContent = `${k.queryLen} tokens${split}${grid} · ${k.numLayers} layers × ${k.numHeads} heads · ${a.model}${method}${versus}${excluded ? sinksText(k, excluded) : ""}`;
    const comparing = Boolean(b);
    $("pane-b").hidden = !comparing;
    $("difference").hidden = !comparing;
    for (const [id, trace] of [["pane-a", a], ["pane-b", b]]) {
      const title = $(id).querySelector(".pane-title");
      title.hidden = !comparing;
      if (trace) title.textContent = trace === a ? state.text : state.compare;
    }
    if (!VIEWS[state.view] && LAZY_VIEWS[state.view] && app.analysis()) VIEWS[state.view] = await track(LAZY_VIEWS[state.view]());
    if (!VIEWS[state.view]) throw new Error(`this page has no ${state.view} view`);
    if (!fresh()) return;
    await viewOf(panes.a, state.view).render(a, fresh);
    if (comparing && fresh()) {
      await viewOf(panes.b, state.view).render(b, fresh);
      if (fresh()) await difference.render(a, b, fresh);
    }
    if (fresh()) {
      showCount();
      window.attnscopeTimings = { ...window.attnscopeTimings, renders: (window.attnscopeTimings?.renders || 0) + 1 };
    }
  } catch (err) {
    if (fresh()) app.fail(err);
  }
}

const SINKS_THRESHOLD = 0.2; // the service's default sink threshold (SinksView)
let excludedRun = null; // { key, promise of the excluded key positions }

// The key positions the sinks toggle leaves out of `info`'s views (TraceInfo.excluded_keys of a
// renormalised GetViews call; asked once per trace).
function excludedKeys(info) {
  const key = `${info.traceId}${info.variant}`;
  if (excludedRun?.key !== key) {
    const promise = track(getViews(info.traceId, [views.sinks("sinks", SINKS_THRESHOLD)], { quiet: true })).then((r) => r.info.excludedKeys);
    excludedRun = { key, promise };
    promise.catch(() => {
      if (excludedRun?.promise === promise) excludedRun = null;
    });
  }
  return excludedRun.promise;
}

function sinksText(k, keys) {
  if (!keys.length) return ` · sinks (≥ ${SINKS_THRESHOLD}): none found`;
  const named = keys.map((p) => `${p} “${k.keyTokens[p] ?? "?"}”`).join(", ");
  return ` · sinks removed (≥ ${SINKS_THRESHOLD}, rows renormalised): keys ${named}`;
}

function clip(text) {
  return text.length > 40 ? `${text.slice(0, 40)}…` : text;
}

function download(name, blob) {
  const a = document.createElement("a");
  a.href = URL.createObjectURL(blob);
  a.download = name;
  a.click();
  setTimeout(() => URL.revokeObjectURL(a.href), 1000);
}

function shownView() {
  return panes.a.views[state.view]?.mounted;
}

function setupExports() {
  // PNG (2×) and SVG of every view, framed with the title and legend (export.js); JSON of its data.
  $("export-png").addEventListener("click", () => {
    const view = shownView();
    const canvas = view && pngCanvas(view, titleOf(state, view));
    if (!canvas) return showError("nothing to export yet: run a text first");
    canvas.toBlob((blob) => download(`attnscope-${state.view}@${PNG_SCALE}x.png`, blob));
  });
  $("export-svg").addEventListener("click", () => {
    const view = shownView();
    const svg = view && svgText(view, titleOf(state, view));
    if (!svg) return showError("nothing to export yet: run a text first");
    download(`attnscope-${state.view}.svg`, new Blob([svg], { type: "image/svg+xml" }));
  });
  $("export-json").addEventListener("click", () => {
    const data = shownView()?.exportJson?.();
    if (data) download(`attnscope-${state.view}.json`, new Blob([JSON.stringify({ state: { ...state }, data })], { type: "application/json" }));
  });
}

async function init() {
  loadFromUrl(window.location.search, window.attnscopeEmbedded?.initialState || {});
  if (window.attnscopeEmbedded) {
    // A standalone file (a notebook embed) holds one input: the controls that cannot work there
    // (texts, model, Run, compare) are not shown; the text is the page's title line.
    document.documentElement.classList.add("embedded");
    $("embedded-text").textContent = [state.text, state.pair].filter(Boolean).join(" | ");
    // A file without neuron views (bertviz's head_view and model_view) shows no Neuron tab.
    const neuron = Object.values(window.attnscopeEmbedded.neuronQueries || {}).some((q) => q.length);
    document.querySelector("#tabs button[data-view=neuron]").hidden = !neuron;
    // The text view reads the service's analysis views (received, rollout, spans), which a file lacks.
    document.querySelector("#tabs button[data-view=text]").hidden = true;
  }
  document.documentElement.dataset.theme = state.theme;
  try {
    app.server = await serverInfo();
    const models = app.server.models;
    $("model").replaceChildren(...models.map((m) => new Option(m.name, m.name, false, m.name === state.model)));
    if (!state.model && models.length) state.model = models.find((m) => m.isDefault)?.name || models[0].name;
  } catch (err) {
    app.fail(err);
  }
  $("model").addEventListener("change", showInputs);
  $("image").addEventListener("change", () => {
    const file = $("image").files[0];
    picking = file ? readPick(file) : null;
    picking?.then(showInputs, (err) => app.fail(err));
  });
  $("image-clear").addEventListener("click", () => {
    if (picked) URL.revokeObjectURL(picked.url);
    picked = picking = null;
    $("image").value = "";
    showInputs();
  });
  $("run-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      await track(picking); // a pick still being read is what Run traces
    } catch {
      return; // its error is shown already
    }
    const generate = Math.max(0, Number.parseInt($("generate").value, 10) || 0);
    update({ model: $("model").value, text: $("text").value, pair: $("pair").value, compare: $("compare").value, generate, query: -1, sel: "" });
  });
  for (const tab of document.querySelectorAll("#tabs button")) tab.addEventListener("click", () => update({ view: tab.dataset.view }));
  $("theme").addEventListener("click", () => update({ theme: state.theme === "dark" ? "light" : "dark" }));
  $("sinks").addEventListener("change", () => update({ sinks: $("sinks").checked ? 1 : 0 }));
  setupExports();
  showCount = installKeys(app, $("search"), $("search-count"));
  subscribe(render);
  window.addEventListener("resize", () => update({}));
  update({});
}

init();
