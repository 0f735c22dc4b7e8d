// Model view: every layer × head as a thumbnail of its pooled attention map (bertviz's model
// view), with "Layers" and "Heads" axes, the model's own layer numbers, query heads that share a
// key head (grouped-query attention) marked as groups, the sentence filter of pairs, and the
// selected head outlined. Click a head to open its detail beside the grid (heatmap.js: tokens,
// zoom, exact values); double-click opens it in the head view. Beside them, every head's
// statistics in a sortable table (names, descriptions and which end is notable from the
// service's GetServerInfo), each head's class among them; sorting orders and colours the grid too.
// The "span maps" mode shows each head's mass between spans of the text instead (SpanPooledView):
// the text's sentences (KindInfo.sentences; the default when there are several) or equal spans.
// A generation trace's table gains each head's retrieval score (stats-table.js), sortable.
import { picture, sizeCanvas } from "../canvas.js";
import { getViews, HEAD_CLASS_LABELS, views } from "../data.js";
import { escapeHtml, formatValue, themeColor, tokenLabel } from "../format.js";
import { keyHeadOf } from "./head-data.js";
import { mountHeatmap, paintMatrix, weightLegend } from "./heatmap.js";
import { CLASS_SORT, hasRetrieval, loadRetrieval, RETRIEVAL, renderStatsTable, statsWith } from "./stats-table.js";

export { paintMatrix };
const LEFT = 46; // "Layers" and the layer numbers
const TOP = 36; // "Heads", the head numbers and the key-head groups
const GAP = 4;
const DETAIL = 640; // CSS pixels the detail takes beside the grid (on screens wide enough for both)
const BESIDE = 1500; // from this width of the view on, the detail sits beside the grid, else below
export const SPAN_COUNTS = [4, 8, 16, 32]; // the span maps' choices of equal spans
export const SENTENCES = "sentences"; // the span maps' (and the text view's passages') sentence unit

// `n` equal spans [start, stop) of `length` positions (fewer when the text is shorter).
export function equalSpans(length, n) {
  const count = Math.max(1, Math.min(n, length));
  return Array.from({ length: count }, (_, i) => [Math.floor((i * length) / count), Math.floor(((i + 1) * length) / count)]);
}

// The thumbnail blocks [r0, r1) × [c0, c1) a sentence filter keeps (all of them without a pair).
export function cropOf(filter, bStart, rows, cols, lq, lk) {
  if (!filter || filter === "all" || bStart < 0) return [0, rows, 0, cols];
  const rb = Math.round((bStart * rows) / lq);
  const cb = Math.round((bStart * cols) / lk);
  const [qa, ka] = [filter[0] === "A", filter[1] === "A"];
  return [qa ? 0 : rb, qa ? rb : rows, ka ? 0 : cb, ka ? cb : cols];
}

export function drawGrid(ctx, m) {
  const { layers, heads, cell, rows, cols, pooled, order, stat, dark, crop } = m;
  if (m.background) {
    ctx.fillStyle = m.background;
    ctx.fillRect(0, 0, m.width, m.height);
  } else ctx.clearRect(0, 0, m.width, m.height);
  const tile = document.createElement("canvas");
  tile.width = cols;
  tile.height = rows;
  const tctx = tile.getContext("2d");
  const image = tctx.createImageData(cols, rows);
  const [r0, r1, c0, c1] = crop;
  ctx.imageSmoothingEnabled = false;
  ctx.textBaseline = "top";
  const cellX = (col) => LEFT + col * (cell + GAP);
  const cellY = (l) => TOP + l * m.rowH;
  for (let l = 0; l < layers; l++) {
    for (let col = 0; col < heads; col++) {
      const h = order[l][col];
      const offset = (l * heads + h) * rows * cols;
      paintMatrix(image, pooled.subarray(offset, offset + rows * cols), rows, cols, dark);
      tctx.putImageData(image, 0, 0);
      const x = cellX(col);
      const y = cellY(l);
      ctx.drawImage(tile, c0, r0, Math.max(1, c1 - c0), Math.max(1, r1 - r0), x, y, cell, cell);
      if (m.split) {
        // Where generation starts: queries below the line, keys right of it were generated.
        ctx.fillStyle = m.selectedColor;
        ctx.fillRect(x, y + m.split * cell, cell, 1);
        ctx.fillRect(x + m.split * cell, y, 1, cell);
      }
      if (stat) {
        const v = m.stats[stat][l * heads + h];
        ctx.fillStyle = `rgba(214, 39, 40, ${m.notability(v).toFixed(3)})`;
        ctx.fillRect(x, y + cell + 1, cell, 11);
        ctx.fillStyle = m.textColor;
        ctx.font = "10px system-ui, sans-serif";
        ctx.fillText(`H${m.headName(h)} ${formatValue(v)}`, x + 2, y + cell + 1, cell - 2);
      }
      if (m.selected && m.selected.layer === l && m.selected.head === h) {
        ctx.strokeStyle = m.selectedColor;
        ctx.lineWidth = 3;
        ctx.strokeRect(x - 1.5, y - 1.5, cell + 3, cell + 3);
      }
    }
  }
  // Axes: layer numbers (the model's own), head numbers and key-head groups (unsorted).
  ctx.fillStyle = m.textColor;
  ctx.strokeStyle = m.textColor;
  ctx.font = "11px system-ui, sans-serif";
  ctx.textAlign = "right";
  ctx.textBaseline = "middle";
  for (let l = 0; l < layers; l++) ctx.fillText(m.layerName(l), LEFT - 5, cellY(l) + cell / 2);
  ctx.textAlign = "center";
  if (!stat) {
    for (let col = 0; col < heads; col++) ctx.fillText(m.headName(col), cellX(col) + cell / 2, TOP - 16);
    if (m.keyHead(0) !== null) {
      ctx.lineWidth = 1;
      for (let col = 0; col < heads; col++) {
        const g = m.keyHead(col);
        if (col > 0 && m.keyHead(col - 1) === g) continue;
        let end = col;
        while (end + 1 < heads && m.keyHead(end + 1) === g) end++;
        const x0 = cellX(col) + 1;
        const x1 = cellX(end) + cell - 1;
        ctx.beginPath();
        ctx.moveTo(x0, TOP - 4);
        ctx.lineTo(x0, TOP - 7);
        ctx.lineTo(x1, TOP - 7);
        ctx.lineTo(x1, TOP - 4);
        ctx.stroke();
      }
    }
  }
  ctx.font = "bold 12px system-ui, sans-serif";
  const headsTitle = m.title || (stat ? `Heads, sorted by ${stat} (notable first)` : m.keyHead(0) !== null ? "Heads (bracketed: sharing a key head)" : "Heads");
  ctx.fillText(headsTitle, LEFT + (heads * (cell + GAP)) / 2, 8);
  ctx.save();
  ctx.translate(10, TOP + (layers * m.rowH) / 2);
  ctx.rotate(-Math.PI / 2);
  ctx.fillText("Layers", 0, 0);
  ctx.restore();
  ctx.textAlign = "left";
}

// ---- mounting ----------------------------------------------------------------------------------
export function mount(root, app) {
  const stats = app.server.headStats; // [{ name, description, notable: "high" | "low" }]
  const notableLow = new Set(stats.filter((s) => s.notable === "low").map((s) => s.name));
  root.innerHTML = `
    <div class="controls">
      <label>Sort and colour by <select class="sort"><option value="">— (head order)</option><option value="${CLASS_SORT}">class</option>
        ${[...stats, RETRIEVAL].map((s) => `<option value="${escapeHtml(s.name)}" title="${escapeHtml(s.description)}">${escapeHtml(s.name)}</option>`).join("")}</select></label>
      <label title="pooled attention maps, or each head's mass between spans of the text (its sentences, or equal spans)">Maps <select class="maps">
        <option value="">pooled attention</option><option value="spans">span maps</option></select></label>
      <label class="spans-label" hidden title="the text's sentences, or the text cut into this many equal spans">Spans <select class="spans">
        <option value="${SENTENCES}">sentences</option>${SPAN_COUNTS.map((n) => `<option value="${n}">${n} equal spans</option>`).join("")}</select></label>
      <label class="kind-label" hidden>Attention <select class="kind"></select></label>
      <label class="filter-label" hidden>Sentences <select class="filter">
        <option value="all">all</option><option value="AA">A → A</option><option value="AB">A → B</option>
        <option value="BA">B → A</option><option value="BB">B → B</option></select></label>
      <span class="hint">click a head for its detail; double-click to open it in the head view</span>
    </div>
    <div class="model-body">
      <div class="grid-wrap"><canvas class="grid"></canvas><ol class="span-key muted" hidden aria-label="the sentences of the span maps"></ol></div>
      <div class="detail"></div>
      <div class="stats-panel" aria-label="head statistics"></div>
    </div>
    <div class="tooltip grid-tip" hidden></div>`;
  const $ = (sel) => root.querySelector(sel);
  const grid = $(".grid");
  const tip = $(".grid-tip");
  const detail = mountHeatmap($(".detail"), app);
  let current = null; // { key, k: KindInfo, rows, cols, pooled, stats, classes (or null) }
  let spanMaps = null; // { key, unit, spans, keySpans, data: Float32Array [layers, heads, n, nk] }: the span maps mode's
  let layoutInfo = null;
  let pointer = null;

  $(".sort").addEventListener("change", (e) => app.update({ sort: e.target.value }));
  $(".kind").addEventListener("change", (e) => app.update({ kind: e.target.value }));
  $(".filter").addEventListener("change", (e) => app.update({ filter: e.target.value }));
  $(".maps").addEventListener("change", (e) => app.update({ maps: e.target.value }));
  $(".spans").addEventListener("change", (e) => app.update({ spans: e.target.value === SENTENCES ? SENTENCES : Number(e.target.value) }));

  // The span maps shown (the mode on and loaded), else null.
  function spansShown() {
    return app.state.maps === "spans" && spanMaps?.key === spanKey(current.key, current.k) ? spanMaps : null;
  }

  function spanKey(key, k) {
    return `${key}/spans${spanUnit(k)}`;
  }

  // The state's span unit for `k`: "sentences" (when it has sentences) or a count of equal spans;
  // unset, the sentences when the text has more than one.
  function spanUnit(k) {
    const asked = app.state.spans;
    if (asked === SENTENCES && k.sentences.length) return SENTENCES;
    if (SPAN_COUNTS.includes(asked)) return asked;
    return k.sentences.length > 1 ? SENTENCES : 8;
  }

  // The query and key spans of unit `unit` (cross attention's keys are the encoder's text).
  function spansOf(info, k, unit) {
    if (unit !== SENTENCES) return [equalSpans(k.queryLen, unit), equalSpans(k.keyLen, unit)];
    const keyText = k.kind === "cross" ? info.kinds.find((x) => x.kind === "encoder") : k;
    return [k.sentences, keyText?.sentences.length ? keyText.sentences : equalSpans(k.keyLen, 8)];
  }

  const classOf = (l, h) => HEAD_CLASS_LABELS[current.classes?.[l * current.k.numHeads + h]] || "";

  function order(k, values, stat) {
    return [...Array(k.numLayers).keys()].map((l) => {
      const idx = [...Array(k.numHeads).keys()];
      if (app.state.sort === CLASS_SORT && current.classes) return idx.sort((a, b) => classOf(l, a).localeCompare(classOf(l, b)));
      if (!stat || !values) return idx;
      const sign = notableLow.has(stat) ? 1 : -1; // the notable end first
      return idx.sort((a, b) => sign * (values[l * k.numHeads + a] - values[l * k.numHeads + b]));
    });
  }

  function selectedHead() {
    const s = app.state;
    return s.head >= 0 ? { layer: Math.min(s.layer, current.k.numLayers - 1), head: Math.min(s.head, current.k.numHeads - 1) } : null;
  }

  function gridModel(background) {
    const { k } = current;
    const s = app.state;
    const stat = current.stats[s.sort] ? s.sort : "";
    const avail = Math.max(320, Math.min(root.clientWidth, window.innerWidth - 32) - 8);
    const beside = avail >= BESIDE;
    const cell = Math.max(20, Math.min(96, Math.floor(((beside ? avail - DETAIL : avail) - LEFT - 4) / k.numHeads) - GAP));
    const rowH = cell + GAP + (stat ? 13 : 0);
    const width = LEFT + k.numHeads * (cell + GAP);
    const height = TOP + k.numLayers * rowH + 4;
    const values = stat ? current.stats[stat] : null;
    let lo = Infinity;
    let hi = -Infinity;
    if (values) for (const v of values) { lo = Math.min(lo, v); hi = Math.max(hi, v); }
    const maps = spansShown();
    const [rows, cols, pooled] = maps ? [maps.spans.length, maps.keySpans.length, maps.data] : [current.rows, current.cols, current.pooled];
    const byClass = s.sort === CLASS_SORT && current.classes;
    const spansTitle = maps ? ` · span maps, ${describeUnit(maps)}` : "";
    return {
      layers: k.numLayers, heads: k.numHeads, cell, rowH, width, height, detailWidth: beside ? avail - width - 16 : avail, rows, cols, pooled,
      order: order(k, values, stat), stat, stats: current.stats, dark: s.theme === "dark", background,
      title: byClass ? `Heads, grouped by class${spansTitle}` : spansTitle && `Heads${spansTitle}`,
      crop: maps ? [0, rows, 0, cols] : cropOf(s.filter, k.sentenceBStart, current.rows, current.cols, k.queryLen, k.keyLen),
      split: current.promptLen && current.promptLen < k.queryLen ? current.promptLen / k.queryLen : 0,
      selected: selectedHead(), selectedColor: themeColor("--selected", "#d62728"), textColor: themeColor("--fg", "#222"),
      layerName: (l) => app.layerName(l, k.kind), headName: (h) => app.headName(h), keyHead: (h) => keyHeadOf(k, h),
      notability: (v) => {
        const t = hi > lo ? (v - lo) / (hi - lo) : 0;
        return notableLow.has(stat) ? 1 - t : t;
      },
    };
  }

  function gridFrame() {
    if (!current || root.hidden || root.offsetParent === null) return;
    const t0 = performance.now();
    const m = gridModel();
    drawGrid(sizeCanvas(grid, m.width, m.height), m);
    detailWidth = m.detailWidth;
    layoutInfo = { left: LEFT, top: TOP, cell: m.cell, gap: GAP, rowH: m.rowH, order: m.order, crop: m.crop };
    grid.dataset.layout = JSON.stringify(layoutInfo); // geometry for tests and tools
    showTip();
    const t = window.attnscopeTimings || {};
    // modelDrawMs: drawing alone; modelReadyMs: from navigation start to the first drawn grid.
    window.attnscopeTimings = { ...t, modelDrawMs: performance.now() - t0, modelReadyMs: t.modelReadyMs ?? performance.now() };
  }

  let detailWidth = 600;
  function frame() {
    gridFrame();
    detail.frame(detailWidth);
  }

  function cellAt(event) {
    if (!layoutInfo || !current) return null;
    const rect = grid.getBoundingClientRect();
    const x = event.clientX - rect.left - layoutInfo.left;
    const y = event.clientY - rect.top - layoutInfo.top;
    const col = Math.floor(x / (layoutInfo.cell + layoutInfo.gap));
    const l = Math.floor(y / layoutInfo.rowH);
    if (x < 0 || y < 0 || col >= current.k.numHeads || l >= current.k.numLayers) return null;
    const fx = (x - col * (layoutInfo.cell + layoutInfo.gap)) / layoutInfo.cell;
    const fy = (y - l * layoutInfo.rowH) / layoutInfo.cell;
    return { layer: l, head: layoutInfo.order[l][col], fx, fy };
  }

  // Hover over a thumbnail: the head, its key head, its statistics and the cell under the pointer.
  function showTip() {
    const hit = pointer && cellAt(pointer);
    if (!hit) {
      tip.hidden = true;
      return;
    }
    const { k } = current;
    const g = keyHeadOf(k, hit.head);
    const lines = statsWith(stats, current.stats).map((st) => `${escapeHtml(st.name)} ${formatValue(current.stats[st.name][hit.layer * k.numHeads + hit.head])}`);
    const cls = classOf(hit.layer, hit.head);
    const maps = spansShown();
    let cellLine = "";
    if (hit.fx < 1 && hit.fy < 1) {
      const [r0, r1, c0, c1] = layoutInfo.crop;
      const r = r0 + Math.floor(hit.fy * (r1 - r0));
      const c = c0 + Math.floor(hit.fx * (c1 - c0));
      const [rows, cols, values] = maps ? [maps.spans.length, maps.keySpans.length, maps.data] : [current.rows, current.cols, current.pooled];
      const v = values[(hit.layer * k.numHeads + hit.head) * rows * cols + r * cols + c];
      if (maps) {
        const span = ([a, b]) => `${a}–${b - 1}`;
        // Sentences are numbered from 1 (as the key below the grid lists them), equal spans from 0.
        const [unit, n0] = maps.unit === SENTENCES ? ["sentence", 1] : ["span", 0];
        cellLine = `${unit} ${r + n0} (tokens ${span(maps.spans[r])}) → ${unit} ${c + n0} (keys ${span(maps.keySpans[c])}): <b>${formatValue(v)}</b> (mean per query row)`;
      } else if (current.rows === k.queryLen && current.cols === k.keyLen) {
        cellLine = `${escapeHtml(tokenLabel(k.queryTokens, r))} (${r}) → ${escapeHtml(tokenLabel(k.keyTokens, c))} (${c}): <b>${formatValue(v)}</b>`;
      } else {
        const span = (i, n, len) => `${Math.floor((i * len) / n)}–${Math.floor(((i + 1) * len) / n) - 1}`;
        cellLine = `queries ${span(r, current.rows, k.queryLen)} → keys ${span(c, current.cols, k.keyLen)}: <b>${formatValue(v)}</b> (block mean)`;
      }
    }
    tip.innerHTML = `<div>layer ${escapeHtml(app.layerName(hit.layer, k.kind))}, head ${escapeHtml(app.headName(hit.head))}${g === null ? "" : ` (key head ${g})`}${cls ? ` · <span class="head-class">${escapeHtml(cls)}</span>` : ""}</div><div>${cellLine}</div><div class="muted">${lines.join(" · ")}</div>`;
    tip.style.left = `${pointer.clientX + 12}px`;
    tip.style.top = `${pointer.clientY + 12}px`;
    tip.hidden = false;
  }

  grid.addEventListener("mousemove", (event) => {
    pointer = event;
    app.invalidate(gridFrame);
  });
  grid.addEventListener("mouseleave", () => {
    pointer = null;
    app.invalidate(gridFrame);
  });
  grid.addEventListener("click", (event) => {
    const hit = cellAt(event);
    if (hit) app.update({ layer: hit.layer, head: hit.head });
  });
  grid.addEventListener("dblclick", (event) => {
    const hit = cellAt(event);
    if (hit) app.update({ view: "head", layer: hit.layer, head: hit.head });
  });

  function drawTable(k) {
    renderStatsTable($(".stats-panel"), {
      stats: statsWith(stats, current.stats), values: current.stats, classes: current.classes, numHeads: k.numHeads,
      rows: [...Array(k.numLayers * k.numHeads).keys()].map((i) => ({ layer: Math.floor(i / k.numHeads), head: i % k.numHeads })),
      sort: current.stats[app.state.sort] || (app.state.sort === CLASS_SORT && current.classes) ? app.state.sort : "", selected: selectedHead(),
      layerName: (l) => app.layerName(l, k.kind), headName: (h) => app.headName(h), keyHead: (h) => keyHeadOf(k, h),
    }, { onSort: (sort) => app.update({ sort }), onPick: ({ layer, head }) => app.update({ layer, head }) });
  }

  // Load the thumbnails, statistics and the detail's pooled map the state asks for (one call,
  // only what is not loaded yet); then, if no newer render started, draw.
  async function render(info, fresh) {
    const s = app.state;
    const viewer = app.server.viewer;
    const k = info.kind(s.kind);
    const lq = k.queryLen;
    const lk = k.keyLen;
    const layer = Math.min(Math.max(0, s.layer), k.numLayers - 1);
    const head = s.head >= 0 ? Math.min(s.head, k.numHeads - 1) : 0;
    const key = `${info.traceId}${info.variant || ""}/${k.kind}`;
    const zoomKey = `${key}/${layer}/${head}`;
    const needGrid = current?.key !== key;
    const needZoom = detail.shown()?.key !== zoomKey;
    const unit = spanUnit(k);
    const wantSpans = s.maps === "spans" && spanMaps?.key !== spanKey(key, k);
    const retrieval = needGrid && hasRetrieval(info, k, app.analysis());
    const requested = [];
    if (needGrid) {
      requested.push(views.pooled("thumbs", Math.min(viewer.thumbnailSize, Math.max(lq, lk)), k.kind));
      requested.push(views.headStats("stats", k.kind));
      if (app.analysis()) requested.push(views.headClasses("classes", k.kind));
    }
    const [spans, keySpans] = spansOf(info, k, unit);
    if (wantSpans) requested.push(views.spanPooled("spanmaps", spans, k.kind, [], [], keySpans));
    if (needZoom) requested.push(views.pooled("heatmap", Math.min(viewer.tileSize, Math.max(lq, lk)), k.kind, [layer], [head]));
    const scores = retrieval ? loadRetrieval(info.traceId, k) : null;
    let tensors = {};
    if (requested.length) {
      ({ tensors } = await app.busy(getViews(info.traceId, requested)));
      if (!fresh()) return;
    }
    const retrievalScores = await scores;
    if (!fresh()) return;
    if (needGrid) {
      const thumbs = tensors.thumbs;
      current = { key, k, rows: thumbs.shape[2], cols: thumbs.shape[3], pooled: thumbs.data, promptLen: info.generatedFrom(k.kind),
        stats: Object.fromEntries(stats.map((st) => [st.name, tensors[`stats/${st.name}`].data])), classes: tensors.classes?.data || null };
      if (retrievalScores) current.stats[RETRIEVAL.name] = retrievalScores;
    }
    if (wantSpans) spanMaps = { key: spanKey(key, k), unit, spans, keySpans, data: tensors.spanmaps.data };
    const base = tensors.heatmap;
    detail.show(needZoom ? { key: zoomKey, traceId: info.traceId, k, layer, head, base: base.data, rows: base.shape[2], cols: base.shape[3] } : detail.shown(), app.layerName(layer, k.kind));
    $(".kind-label").hidden = info.kinds.length < 2;
    $(".kind").replaceChildren(...info.kindNames.map((n) => new Option(n, n, false, n === k.kind)));
    $(".filter-label").hidden = k.sentenceBStart < 0 || s.maps === "spans"; // span maps are of the whole text
    $(".filter").value = s.filter;
    $(".sort").querySelector(`option[value="${RETRIEVAL.name}"]`).hidden = !current.stats[RETRIEVAL.name];
    $(".sort").value = s.sort;
    $(".maps").value = s.maps === "spans" ? "spans" : "";
    $(".maps").closest("label").hidden = !app.analysis();
    $(".spans-label").hidden = s.maps !== "spans";
    $(".spans").value = String(unit);
    $(".spans").querySelector(`option[value="${SENTENCES}"]`).hidden = !k.sentences.length;
    drawSpanKey(k);
    drawTable(k);
    frame();
  }

  // Under the grid, in sentence mode: each sentence's number, tokens and first words (the rows and
  // columns of every span map, in order).
  function drawSpanKey(k) {
    const maps = spansShown();
    const list = $(".span-key");
    list.hidden = maps?.unit !== SENTENCES;
    if (list.hidden) return list.replaceChildren();
    list.innerHTML = maps.spans.map(([a, b], i) => {
      const words = k.queryTokens.slice(a, Math.min(b, a + 10)).map((t) => tokenLabel([t], 0)).join(" ");
      return `<li data-start="${a}" data-stop="${b}">sentence ${i + 1}: tokens ${a}–${b - 1} · ${escapeHtml(words)}${b - a > 10 ? "…" : ""}</li>`;
    }).join("");
  }

  function exportPicture(scale, background) {
    if (!current) return null;
    const m = gridModel(background);
    return picture(m.width, m.height, scale, (ctx) => drawGrid(ctx, m));
  }

  return {
    render,
    exportPicture,
    exportTitle: () => current && `${current.k.numLayers} layers × ${current.k.numHeads} heads · ${current.k.kind}${spansShown() ? ` · span maps, ${describeUnit(spansShown())}` : app.state.filter !== "all" ? ` · sentences ${app.state.filter}` : ""}`,
    exportLegend: () => weightLegend(app.state.theme === "dark"),
    exportJson: () => current && { kind: current.k.kind, rows: current.rows, cols: current.cols, layers: current.k.numLayers,
      heads: current.k.numHeads, pooled: [...current.pooled],
      stats: Object.fromEntries(Object.entries(current.stats).map(([n, v]) => [n, [...v]])),
      ...(current.classes ? { classes: [...current.classes].map((c) => HEAD_CLASS_LABELS[c]) } : {}),
      ...(spansShown() ? { spanUnit: spansShown().unit, spans: spansShown().spans, keySpans: spansShown().keySpans, spanMaps: [...spansShown().data] } : {}) },
  };
}

function describeUnit(maps) {
  return maps.unit === SENTENCES ? `${maps.spans.length} sentences` : `${maps.spans.length} equal spans`;
}
