// Neuron view: for one query token of one head, the query vector q, each key's vector k, their
// elementwise product q×k, the scaled dot product q·k and the softmax; blue for positive, orange
// for negative, intensity by magnitude; numbers on hover. Long inputs show the top keys first.
import { signedColor } from "../colors.js";
import { picture, sizeCanvas } from "../canvas.js";
import { getViews, views } from "../data.js";
import { formatValue, matches, themeColor, tokenLabel } from "../format.js";
import { generations } from "../state.js";
import { inFilter, keyHeadOf } from "./head-data.js";
import { renderStatsTable } from "./stats-table.js";

export const ALL_KEYS_LIMIT = 16384; // beyond, keys come in windows of this size that the user pages through
const ROW = 18;

// ---- pure drawing ------------------------------------------------------------------------------
// m: { rows: [{ key, token, k: Float32Array, qk: Float32Array, score, prob }], q, dim, cell, textColor }
export function draw(ctx, m) {
  const { rows, q, dim, cell } = m;
  if (m.background) {
    ctx.fillStyle = m.background;
    ctx.fillRect(0, 0, m.columns.width, m.height);
  } else ctx.clearRect(0, 0, ctx.canvas.width, ctx.canvas.height);
  ctx.font = "12px system-ui, sans-serif";
  ctx.textBaseline = "middle";
  const scale = (arr) => arr.reduce((a, v) => Math.max(a, Math.abs(v)), 0) || 1;
  const kScale = Math.max(...rows.map((r) => scale(r.k)), 1e-9);
  const qkScale = Math.max(...rows.map((r) => scale(r.qk)), 1e-9);
  const scoreScale = Math.max(...rows.map((r) => (Number.isFinite(r.score) ? Math.abs(r.score) : 0)), 1e-9);
  const x = m.columns;
  // Header and the query vector.
  ctx.fillStyle = m.textColor;
  ctx.textAlign = "left";
  ctx.fillText("q", x.k - 14, ROW / 2);
  const qScale = scale(q);
  for (let d = 0; d < dim; d++) {
    ctx.fillStyle = signedColor(q[d], qScale);
    ctx.fillRect(x.k + d * cell, 2, cell - 1, ROW - 4);
  }
  ctx.fillStyle = m.textColor;
  ctx.fillText("k", x.k, ROW * 1.5);
  ctx.fillText("q × k", x.qk, ROW * 1.5);
  ctx.fillText("q · k", x.score, ROW * 1.5);
  ctx.fillText("softmax", x.prob, ROW * 1.5);
  rows.forEach((r, i) => {
    const y = ROW * (i + 2);
    ctx.fillStyle = m.textColor;
    ctx.textAlign = "right";
    if (m.found?.has(r.key)) {
      ctx.fillStyle = m.matchColor;
      ctx.fillRect(0, y + 1, x.k - 4, ROW - 2);
      ctx.fillStyle = m.textColor;
    }
    ctx.fillText(r.token, x.k - 6, y + ROW / 2, x.k - 10);
    for (let d = 0; d < dim; d++) {
      ctx.fillStyle = signedColor(r.k[d], kScale);
      ctx.fillRect(x.k + d * cell, y + 2, cell - 1, ROW - 4);
      ctx.fillStyle = signedColor(r.qk[d], qkScale);
      ctx.fillRect(x.qk + d * cell, y + 2, cell - 1, ROW - 4);
    }
    if (Number.isFinite(r.score)) {
      ctx.fillStyle = signedColor(r.score, scoreScale);
      ctx.fillRect(x.score, y + 2, 40, ROW - 4);
    }
    ctx.fillStyle = "rgba(31, 119, 180, 0.85)";
    ctx.fillRect(x.prob, y + 3, Math.max(0, r.prob) * 120, ROW - 6);
    ctx.fillStyle = m.textColor;
    ctx.textAlign = "left";
    ctx.fillText(formatValue(r.prob), x.prob + 124, y + ROW / 2);
  });
}

export function columns(dim, cell, labelWidth = 110) {
  const k = labelWidth;
  const qk = k + dim * cell + 24;
  const score = qk + dim * cell + 24;
  const prob = score + 56;
  return { k, qk, score, prob, width: prob + 190 };
}

// ---- mounting ----------------------------------------------------------------------------------
export function mount(root, app) {
  root.innerHTML = `
    <div class="controls">
      <label>Layer <select class="layer"></select></label>
      <label>Head <select class="head"></select></label>
      <label class="kind-label" hidden>Attention <select class="kind"></select></label>
      <label class="filter-label" hidden>Sentences <select class="filter">
        <option value="all">all</option><option value="AA">A → A</option><option value="AB">A → B</option>
        <option value="BA">B → A</option><option value="BB">B → B</option></select></label>
      <label>Keys <select class="order"><option value="top">top 20 by weight</option><option value="all">all, in order</option></select></label>
      <span class="paging" hidden><button type="button" class="earlier">◀ earlier keys</button>
        <button type="button" class="later">later keys ▶</button></span>
      <span class="note"></span>
    </div>
    <p class="query-tokens" title="hover a token to preview, click to pin it as the query"></p>
    <div class="neuron-body"><canvas class="neuron"></canvas></div>
    <div class="head-stats" aria-label="head statistics"></div>
    <div class="tooltip" hidden></div>`;
  const $ = (sel) => root.querySelector(sel);
  const canvas = $(".neuron");
  const tooltip = $(".tooltip");
  let current = null; // { key, traceId, k: KindInfo }
  let shown = null; // { rows, q, dim, cell, columns }
  let preview = -1; // the hovered query token (-1: the pinned one)
  let windowStart = null; // first key of the window for inputs longer than ALL_KEYS_LIMIT
  let lastQuery = -1;
  let barKey = "";
  const cache = new Map(); // loaded neuron views by `need.key`
  const loads = generations();

  $(".layer").addEventListener("change", (e) => app.update({ layer: Number(e.target.value) }));
  $(".head").addEventListener("change", (e) => app.update({ head: Number(e.target.value) }));
  $(".kind").addEventListener("change", (e) => app.update({ kind: e.target.value }));
  $(".filter").addEventListener("change", (e) => app.update({ filter: e.target.value }));
  $(".order").addEventListener("change", () => app.invalidate(frame));
  const page = (direction) => {
    const lk = current.k.keyLen;
    windowStart = Math.max(0, Math.min(lk - ALL_KEYS_LIMIT, (windowStart ?? 0) + direction * ALL_KEYS_LIMIT));
    app.invalidate(frame);
  };
  $(".earlier").addEventListener("click", () => page(-1));
  $(".later").addEventListener("click", () => page(1));

  // What the state asks to show: { key, layer, head, query, keys (a window or null) }.
  function need() {
    const s = app.state;
    const { k } = current;
    const layer = Math.min(Math.max(0, s.layer), k.numLayers - 1);
    const head = Math.min(Math.max(0, s.head), k.numHeads - 1);
    const query = preview >= 0 ? preview : Math.min(Math.max(0, s.query), k.queryLen - 1);
    if (query !== lastQuery) windowStart = null; // a new query starts at its own window
    lastQuery = query;
    let keys = null;
    if (k.keyLen > ALL_KEYS_LIMIT) {
      // By default the window that ends at the query (all a causal query can see, if it fits).
      if (windowStart === null) windowStart = Math.max(0, Math.min(k.keyLen - ALL_KEYS_LIMIT, query - ALL_KEYS_LIMIT + 1));
      keys = [windowStart, windowStart + ALL_KEYS_LIMIT];
    }
    return { key: `${current.key}/${layer}/${head}/${query}/${keys ? keys[0] : 0}`, layer, head, query, keys };
  }

  async function load(n) {
    const requested = [views.neuron("neuron", n.layer, n.head, n.query, n.keys, current.k.kind)];
    const names = app.server.headStats.map((st) => st.name);
    if (!current.stats && names.length) requested.push(views.headStats("stats", current.k.kind));
    const { tensors } = await getViews(current.traceId, requested);
    if (!current.stats && names.length) current.stats = Object.fromEntries(names.map((name) => [name, tensors[`stats/${name}`].data]));
    const t = (part) => tensors[`neuron/${part}`];
    return { offset: n.keys ? n.keys[0] : 0, q: t("q").data, k: t("k"), qk: t("q_times_k"), scores: t("scores").data, probs: t("probs").data };
  }

  // The load step of a preview (hover) or a page of keys: the newest request wins.
  async function loadAndShow(n) {
    const g = loads.start();
    try {
      const loaded = await app.track(load(n));
      cache.set(n.key, loaded);
      if (loads.isCurrent(g)) app.invalidate(frame);
    } catch (err) {
      if (loads.isCurrent(g)) app.fail(err);
    }
  }

  // The query tokens (wrapping lines): the query outlined, search matches highlighted, queries
  // outside the sentence filter's query sentence dimmed, generated tokens marked.
  function tokensBar(query) {
    const s = app.state;
    const key = `${current.key}/${query}/${s.search}/${s.filter}`;
    if (key === barKey) return;
    barKey = key;
    const found = new Set(matches(current.k.queryTokens, s.search));
    const b = current.k.sentenceBStart;
    const held = heldQueries(); // a file holds neuron views for these only
    $(".query-tokens").replaceChildren(...current.k.queryTokens.map((tok, i) => {
      const span = document.createElement("span");
      span.textContent = tok;
      span.dataset.index = String(i);
      span.title = `${tokenLabel(current.k.queryTokens, i)} (position ${i})`;
      const outside = (s.filter !== "all" && b >= 0 && (s.filter[0] === "A") !== (i < b)) || (held && !held.has(i));
      if (held && !held.has(i)) span.title += ": not in this file's neuron views";
      const generated = current.promptLen && i >= current.promptLen;
      if (generated) span.title += ", generated";
      span.className = `token${i === query ? " pinned" : ""}${found.has(i) ? " match" : ""}${outside ? " filtered" : ""}${generated ? " gen" : ""}`;
      return span;
    }));
  }

  // The query tokens a standalone file holds neuron views for (null: every token, live or all exported).
  function heldQueries() {
    const exported = window.attnscopeEmbedded?.neuronQueries?.[current?.k.kind];
    return exported ? new Set(exported) : null;
  }
  const pickable = (i) => !Number.isNaN(i) && !(heldQueries() && !heldQueries().has(i));

  $(".query-tokens").addEventListener("mouseover", (e) => {
    const i = Number(e.target.dataset?.index);
    if (pickable(i) && i !== preview) {
      preview = i;
      app.invalidate(frame);
    }
  });
  $(".query-tokens").addEventListener("mouseleave", () => {
    preview = -1;
    app.invalidate(frame);
  });
  $(".query-tokens").addEventListener("click", (e) => {
    const i = Number(e.target.dataset?.index);
    if (pickable(i)) app.update({ query: i });
  });

  canvas.addEventListener("mousemove", (event) => {
    if (!shown) return;
    const rect = canvas.getBoundingClientRect();
    const x = event.clientX - rect.left;
    const row = Math.floor((event.clientY - rect.top) / ROW) - 2;
    const { columns: c, cell, dim, rows } = shown;
    let text = "";
    if (row === -2 && x >= c.k && x < c.k + dim * cell) {
      const d = Math.floor((x - c.k) / cell);
      text = `q[${d}] = ${formatValue(shown.q[d])}`;
    } else if (row >= 0 && row < rows.length) {
      const r = rows[row];
      if (x >= c.k && x < c.k + dim * cell) text = `k[${Math.floor((x - c.k) / cell)}] = ${formatValue(r.k[Math.floor((x - c.k) / cell)])}`;
      else if (x >= c.qk && x < c.qk + dim * cell) text = `(q×k)[${Math.floor((x - c.qk) / cell)}] = ${formatValue(r.qk[Math.floor((x - c.qk) / cell)])}`;
      else if (x >= c.score && x < c.prob) text = `q·k (scaled) = ${Number.isFinite(r.score) ? formatValue(r.score) : "masked"}`;
      else if (x >= c.prob) text = `softmax = ${formatValue(r.prob)}`;
      if (text) text = `${tokenLabel(current.k.keyTokens, r.key)} (key ${r.key}): ${text}`;
    }
    tooltip.hidden = !text;
    tooltip.textContent = text;
    tooltip.style.left = `${event.clientX + 12}px`;
    tooltip.style.top = `${event.clientY + 12}px`;
  });
  canvas.addEventListener("mouseleave", () => { tooltip.hidden = true; });

  // One frame: draw what is loaded for the current need; if it is not loaded, start its load
  // (the picture stays as it was until the data arrives).
  function frame() {
    if (!current || root.hidden) return;
    const n = need();
    tokensBar(n.query);
    $(".paging").hidden = !n.keys;
    const loaded = cache.get(n.key);
    if (!loaded) {
      loadAndShow(n);
      return;
    }
    paint(n, loaded);
  }

  function paint({ layer, head, query }, n) {
    const { k } = current;
    const dim = n.q.length;
    const count = n.probs.length;
    const s = app.state;
    let order = [...Array(count).keys()].filter((i) => inFilter(s.filter, k.sentenceBStart, query, n.offset + i));
    if ($(".order").value === "top") order = order.sort((a, b) => n.probs[b] - n.probs[a]).slice(0, 20);
    const rows = order.map((i) => ({
      key: n.offset + i, token: tokenLabel(k.keyTokens, n.offset + i),
      k: n.k.data.subarray(i * dim, (i + 1) * dim), qk: n.qk.data.subarray(i * dim, (i + 1) * dim),
      score: n.scores[i], prob: n.probs[i],
    }));
    const cell = Math.max(2, Math.min(8, Math.floor(900 / (2 * dim))));
    const cols = columns(dim, cell);
    const height = ROW * (rows.length + 2) + 4;
    const ctx = sizeCanvas(canvas, cols.width, height);
    shown = { rows, q: n.q, dim, cell, columns: cols, height, layer, head, query };
    draw(ctx, looks(shown));
    $(".note").textContent = `query ${query} “${k.queryTokens[query]}”, layer ${app.layerName(layer, k.kind)}, head ${app.headName(head)}` +
      (count < k.keyLen ? ` (keys ${n.offset}–${n.offset + count - 1})` : "");
    if (current.stats) {
      renderStatsTable($(".head-stats"), {
        stats: app.server.headStats, values: current.stats, numHeads: k.numHeads, rows: [{ layer, head }], sort: "", selected: null,
        layerName: (l) => app.layerName(l, k.kind), headName: (h) => app.headName(h), keyHead: (h) => keyHeadOf(k, h),
        caption: `head statistics, layer ${app.layerName(layer, k.kind)}`,
      });
    }
  }

  function looks(m, background) {
    return {
      ...m, background, found: new Set(matches(current.k.keyTokens, app.state.search)),
      textColor: themeColor("--fg", "#222"), matchColor: themeColor("--match", "#ffd54a"),
    };
  }

  // Load the neuron view the state asks for (unless loaded); then, if no newer render started, draw.
  async function render(info, fresh) {
    const s = app.state;
    const k = info.kind(s.kind);
    const key = `${info.traceId}${info.variant || ""}/${k.kind}`;
    if (current?.key !== key) {
      current = { key, traceId: info.traceId, k, promptLen: info.generatedFrom(k.kind) };
      cache.clear();
      windowStart = null;
      barKey = "";
    }
    const n = need();
    if (!cache.has(n.key)) {
      loads.start(); // a preview still loading is older than this
      const loaded = await app.busy(load(n));
      cache.set(n.key, loaded);
      if (!fresh()) return;
    }
    $(".kind-label").hidden = info.kinds.length < 2;
    $(".kind").replaceChildren(...info.kindNames.map((name) => new Option(name, name, false, name === k.kind)));
    $(".filter-label").hidden = k.sentenceBStart < 0;
    $(".filter").value = s.filter;
    $(".layer").replaceChildren(...[...Array(k.numLayers).keys()].map((l) => new Option(app.layerName(l, k.kind), l, false, l === n.layer)));
    $(".head").replaceChildren(...[...Array(k.numHeads).keys()].map((h) => new Option(app.headName(h), h, false, h === n.head)));
    frame();
  }

  return {
    render,
    exportPicture: (scale, background) => {
      if (!shown) return null;
      return picture(shown.columns.width, shown.height, scale, (ctx) => draw(ctx, looks(shown, background)));
    },
    exportTitle: () => shown && `layer ${app.layerName(shown.layer, current.k.kind)} · head ${app.headName(shown.head)} · query ${shown.query} “${current.k.queryTokens[shown.query]}” · ${current.k.kind}`,
    exportLegend: () => ({ kind: "scale", label: "value ÷ its column’s largest |value| (orange −, blue +)", lo: -1, hi: 1, color: (t) => signedColor(2 * t - 1, 1) }),
    exportJson: () => shown && { q: [...shown.q], rows: shown.rows.map((r) => ({ key: r.key, token: r.token, k: [...r.k], q_times_k: [...r.qk], score: r.score, prob: r.prob })) },
  };
}
