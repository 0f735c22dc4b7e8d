// Head view: two columns of tokens, lines from each query (left) to the keys it attends to
// (right); opacity = weight, one colour per head. The columns sit close (bertviz's compact
// layout: lines of a few hundred pixels read better than page-wide ones), and the head
// statistics of the heads shown stand beside them. Canvas only; long inputs draw only the rows in
// view (virtualized) and take their lines from each head's top-k keys per query. How long is
// "long" and how many keys (ViewerDefaults.full_attention_tokens, head_view_top_k) come from the
// service's GetServerInfo.
import { picture, sizeCanvas } from "../canvas.js";
import { headColor } from "../colors.js";
import { formatValue, matches, themeColor, tokenLabel } from "../format.js";
import { draw, layout, ROW } from "./head-draw.js";
import { keyHeadOf, layerJson, loadLayer, weightOf } from "./head-data.js";
import { mountImagePanel } from "./image.js";
import { hasRetrieval, renderStatsTable, statsWith } from "./stats-table.js";
import { headSvg } from "./head-svg.js";

export { draw, layout, loadLayer, weightOf };
const MINIMAP_WIDTH = 16;

// ---- mounting: DOM, events, loading --------------------------------------------------------------
export function mount(root, app) {
  root.innerHTML = `
    <div class="controls">
      <label>Layer <select class="layer"></select></label>
      <label class="kind-label" hidden>Attention <select class="kind"></select></label>
      <label class="filter-label" hidden>Sentences <select class="filter">
        <option value="all">all</option><option value="AA">A → A</option><option value="AB">A → B</option>
        <option value="BA">B → A</option><option value="BB">B → B</option></select></label>
      <span class="heads" title="click: show or hide a head; double-click: only this head"></span>
      <span class="note"></span>
    </div>
    <div class="head-body">
      <div class="scroller"><div class="spacer"></div><canvas class="lines"></canvas></div>
      <canvas class="minimap" title="click to jump"></canvas>
      <aside class="side">
        <div class="image-panel" hidden></div>
        <div class="head-stats" aria-label="head statistics"></div>
      </aside>
    </div>
    <div class="tooltip" hidden></div>`;
  const $ = (sel) => root.querySelector(sel);
  const canvas = $(".lines");
  const scroller = $(".scroller");
  const minimap = $(".minimap");
  const tooltip = $(".tooltip");
  const imagePanel = mountImagePanel($(".image-panel"), app);
  let current = null; // { key, data, k: KindInfo, layer, image }: what is drawn (image: the input's, or null)
  let hover = null; // { side: "left" | "right", index }
  let pointer = null; // the last mouse position over the canvas (for the tooltip)
  let hoverAt = 0; // when the hover changed (performance.now()), for the hover timing
  let shownQuery = -1; // the pinned query last scrolled to
  let squaresFor = ""; // the kind/heads the head squares were built for

  // The heads shown: state.head alone, else state.heads ("" = all, "none" = none, else a list).
  function headsShown(k) {
    const s = app.state;
    const all = [...Array(k.numHeads).keys()];
    if (s.head >= 0 && s.head < k.numHeads) return [s.head];
    if (!s.heads) return all;
    const chosen = new Set(s.heads.split(",").map(Number));
    return all.filter((h) => chosen.has(h));
  }

  function headsParam(list, k) {
    if (list.length === k.numHeads) return "";
    return list.length ? list.join(",") : "none";
  }

  function rowsOf(k) {
    return Math.max(k.queryLen, k.keyLen);
  }

  function model() {
    const s = app.state;
    const k = current.k;
    const lay = layout(root.clientWidth || 900, k.numHeads);
    const height = scroller.clientHeight || 400;
    const scroll = scroller.scrollTop;
    const first = Math.max(0, Math.floor(scroll / lay.row) - 1);
    const last = Math.min(k.queryLen, Math.ceil((scroll + height) / lay.row) + 1);
    const lastKey = Math.min(k.keyLen, Math.ceil((scroll + height) / lay.row) + 1);
    return {
      lay, first, last, firstKey: first, lastKey, scroll, height, hover, pinned: s.query,
      heads: headsShown(k), data: current.data, filter: s.filter, bStart: k.sentenceBStart,
      queryTokens: k.queryTokens, keyTokens: k.keyTokens, promptLen: current.promptLen,
      found: [...new Set([...matches(k.queryTokens, s.search), ...matches(k.keyTokens, s.search)])],
      textColor: themeColor("--fg", "#222"), accent: themeColor("--accent", "#1f77b4"), matchColor: themeColor("--match", "#ffe08a"),
    };
  }

  // One frame: size the canvases to their CSS boxes × devicePixelRatio, draw, place the tooltip.
  function frame() {
    if (!current || root.hidden || root.offsetParent === null) return;
    const t0 = performance.now();
    const dpr = window.devicePixelRatio || 1;
    const rows = rowsOf(current.k);
    scroller.style.height = `${Math.min(Math.round(window.innerHeight * 0.7), 720, rows * ROW + 4)}px`;
    const m = model();
    scroller.style.width = `${m.lay.width + (scroller.offsetWidth - scroller.clientWidth)}px`;
    draw(sizeCanvas(canvas, m.lay.width, m.height, dpr), m);
    // What is drawn, and where (for tests and tools).
    canvas.dataset.drawn = JSON.stringify({ kind: current.k.kind, layer: current.layer, first: m.first });
    canvas.dataset.layout = JSON.stringify(m.lay);
    drawMinimap(m, dpr);
    drawImage(m);
    showTooltip();
    const done = performance.now();
    const timings = { ...(window.attnscopeTimings || {}), headDrawMs: done - t0 };
    if (hoverAt) timings.hoverMs = done - hoverAt; // from the mousemove to the redrawn canvas
    hoverAt = 0;
    window.attnscopeTimings = timings;
  }

  // The minimap, only when the rows do not fit: the whole length, the rows in view, the matches.
  function drawMinimap(m, dpr) {
    const rows = rowsOf(current.k);
    const h = scroller.clientHeight || 400;
    minimap.hidden = rows * ROW <= h + 1;
    if (minimap.hidden) return;
    const ctx = sizeCanvas(minimap, MINIMAP_WIDTH, h, dpr);
    ctx.clearRect(0, 0, MINIMAP_WIDTH, h);
    ctx.fillStyle = "rgba(127,127,127,0.25)";
    ctx.fillRect(0, 0, MINIMAP_WIDTH, h);
    ctx.fillStyle = m.matchColor;
    for (const i of m.found) ctx.fillRect(0, (i / rows) * h, MINIMAP_WIDTH, 2);
    ctx.fillStyle = "rgba(31,119,180,0.6)";
    const top = (m.scroll / (rows * m.lay.row)) * h;
    ctx.fillRect(0, top, MINIMAP_WIDTH, Math.max(4, (m.height / (rows * m.lay.row)) * h));
  }

  // The image panel, for a trace of an image's patches: the focused query's attention over them.
  function drawImage(m) {
    const { k, image, data, layer } = current;
    if (!image || !k.patchGrid) return imagePanel.hide();
    const query = m.hover?.side === "left" ? m.hover.index : m.pinned;
    imagePanel.show({ image, k, data, heads: m.heads, query: query < k.queryLen ? query : -1, layer });
  }

  function hitTest(event) {
    const rect = canvas.getBoundingClientRect();
    const x = event.clientX - rect.left;
    const index = Math.floor((event.clientY - rect.top + scroller.scrollTop) / ROW);
    const lay = layout(root.clientWidth || 900, current.k.numHeads);
    if (x < lay.leftX && index < current.k.queryLen) return { side: "left", index };
    if (x > lay.rightX && index < current.k.keyLen) return { side: "right", index };
    return null;
  }

  function showTooltip() {
    const s = app.state;
    const query = s.query;
    if (!hover || !pointer || query < 0 || hover.side !== "right") {
      tooltip.hidden = true;
      return;
    }
    const { k, data } = current;
    const lines = headsShown(k).map((h) => {
      const w = weightOf(data, h, query, hover.index);
      const text = w === null ? `below the top ${data.topK}` : formatValue(w);
      return `<div><span class="swatch" style="background:${headColor(h)}"></span>head ${esc(app.headName(h))}: ${text}</div>`;
    });
    tooltip.innerHTML = `<div>${esc(tokenLabel(k.queryTokens, query))} (${query}) → ${esc(tokenLabel(k.keyTokens, hover.index))} (${hover.index}), layer ${esc(app.layerName(current.layer, k.kind))}</div>${lines.join("")}`;
    tooltip.style.left = `${pointer.x + 12}px`;
    tooltip.style.top = `${pointer.y + 12}px`;
    tooltip.hidden = false;
  }

  // Events only change what is shown and ask for the next frame (state.js).
  canvas.addEventListener("mousemove", (event) => {
    if (!current) return;
    const hit = hitTest(event);
    pointer = { x: event.clientX, y: event.clientY };
    if (JSON.stringify(hit) !== JSON.stringify(hover)) {
      hover = hit;
      hoverAt = performance.now();
    }
    app.invalidate(frame);
  });
  canvas.addEventListener("mouseleave", () => {
    hover = null;
    pointer = null;
    app.invalidate(frame);
  });
  canvas.addEventListener("click", (event) => {
    const hit = current && hitTest(event);
    if (hit?.side === "left") app.update({ query: app.state.query === hit.index ? -1 : hit.index });
  });
  scroller.addEventListener("scroll", () => app.invalidate(frame));
  minimap.addEventListener("click", (event) => {
    if (!current) return;
    const rect = minimap.getBoundingClientRect();
    scroller.scrollTop = ((event.clientY - rect.top) / rect.height) * rowsOf(current.k) * ROW - scroller.clientHeight / 2;
  });
  $(".layer").addEventListener("change", (e) => app.update({ layer: Number(e.target.value) }));
  $(".kind").addEventListener("change", (e) => app.update({ kind: e.target.value }));
  $(".filter").addEventListener("change", (e) => app.update({ filter: e.target.value }));

  // The head squares: built once per kind (a rebuild between the two clicks of a double-click
  // would lose it), their on/off state set on every render. Query heads that share a key head
  // (grouped-query attention) sit in one outlined group.
  function drawHeadSquares(k) {
    const box = $(".heads");
    const id = `${k.kind}/${k.numHeads}/${k.numKeyHeads}`;
    if (squaresFor !== id) {
      squaresFor = id;
      box.replaceChildren();
      let group = null;
      for (let h = 0; h < k.numHeads; h++) {
        const g = keyHeadOf(k, h);
        if (g !== null && (!group || Number(group.dataset.keyHead) !== g)) {
          group = document.createElement("span");
          group.className = "head-group";
          group.dataset.keyHead = String(g);
          group.title = `query heads sharing key head ${g} (grouped-query attention)`;
          box.append(group);
        }
        const sq = document.createElement("span");
        sq.className = "head-square";
        sq.style.background = headColor(h);
        sq.dataset.head = String(h);
        sq.title = g === null ? `head ${app.headName(h)}` : `head ${app.headName(h)} (key head ${g})`;
        sq.addEventListener("click", () => {
          const shown = new Set(headsShown(current.k));
          if (shown.has(h)) shown.delete(h);
          else shown.add(h);
          app.update({ head: -1, heads: headsParam([...shown].sort((a, b) => a - b), current.k) });
        });
        sq.addEventListener("dblclick", () => {
          app.update({ head: app.state.head === h ? -1 : h, heads: "" });
        });
        (group || box).append(sq);
      }
    }
    const shown = new Set(headsShown(k));
    for (const sq of box.querySelectorAll(".head-square")) sq.classList.toggle("off", !shown.has(Number(sq.dataset.head)));
  }

  function drawStats(k, layer) {
    const stats = statsWith(app.server.headStats, current.data.stats);
    renderStatsTable($(".head-stats"), {
      stats, values: current.data.stats, classes: current.data.classes, numHeads: k.numHeads, rows: headsShown(k).map((head) => ({ layer, head })),
      sort: "", selected: null, layerName: (l) => app.layerName(l, k.kind), headName: (h) => app.headName(h), keyHead: (h) => keyHeadOf(k, h),
      caption: `head statistics, layer ${app.layerName(layer, k.kind)}`,
    }, { onPick: ({ head }) => app.update({ head, heads: "" }) });
  }

  // Load what the state asks for (unless loaded), then, if no newer render started, draw it.
  async function render(info, fresh) {
    const s = app.state;
    const viewer = app.server.viewer;
    const k = info.kind(s.kind);
    const layer = Math.min(Math.max(0, s.layer), k.numLayers - 1);
    const key = `${info.traceId}${info.variant || ""}/${k.kind}/${layer}`;
    let shown = current?.key === key ? current : null;
    if (!shown) {
      const data = await app.busy(loadLayer(info.traceId, k, layer, viewer, app.server.headStats.map((st) => st.name), app.analysis(), hasRetrieval(info, k, app.analysis())));
      if (!fresh()) return;
      shown = { key, data, k, layer, image: info.image || null, promptLen: info.generatedFrom(k.kind) };
    }
    current = shown;
    $(".layer").replaceChildren(...[...Array(k.numLayers).keys()].map((l) => new Option(app.layerName(l, k.kind), l, false, l === layer)));
    $(".kind-label").hidden = info.kinds.length < 2;
    $(".kind").replaceChildren(...info.kindNames.map((n) => new Option(n, n, false, n === k.kind)));
    $(".filter-label").hidden = k.sentenceBStart < 0;
    $(".filter").value = s.filter;
    drawHeadSquares(k);
    drawStats(k, layer);
    $(".spacer").style.height = `${rowsOf(k) * ROW}px`;
    $(".note").textContent = current.data.exact ? "" : `${k.queryLen} tokens: lines show each query's top ${current.data.topK} keys per head`;
    if (s.query >= 0 && s.query !== shownQuery) {
      // A query moved by the keyboard or a search: bring it into view.
      const y = s.query * ROW;
      if (y < scroller.scrollTop || y + ROW > scroller.scrollTop + scroller.clientHeight) scroller.scrollTop = y - scroller.clientHeight / 2;
    }
    shownQuery = s.query;
    frame();
  }

  // The picture for export, at `scale` device pixels per CSS pixel: every row up to 512 rows
  // (short inputs: the whole picture), else the rows in view.
  function exportCanvas(scale, background) {
    if (!current) return null;
    const m = model();
    const rows = rowsOf(current.k);
    const whole = rows <= 512;
    const height = whole ? rows * ROW + 4 : m.height;
    const full = whole ? { first: 0, last: current.k.queryLen, firstKey: 0, lastKey: current.k.keyLen, scroll: 0 } : {};
    return picture(m.lay.width, height, scale, (ctx) => draw(ctx, { ...m, ...full, height, hover: null, background }));
  }

  return {
    render,
    exportPicture: (scale, background) => exportCanvas(scale, background),
    exportTitle: () => current && `layer ${app.layerName(current.layer, current.k.kind)} · ${describeHeads(headsShown(current.k), current.k, app.headName)} · ${current.k.kind}`,
    exportLegend: () => current && { kind: "heads", heads: headsShown(current.k), names: headsShown(current.k).map(app.headName) },
    exportSvg: (header) => (current && current.data.exact ? headSvg({ ...model(), data: current.data }, header) : null),
    exportJson: () => current && { layer: current.layer, kind: current.k.kind,
      queryTokens: current.k.queryTokens, keyTokens: current.k.keyTokens, heads: headsShown(current.k), ...layerJson(current.data) },
  };
}

function describeHeads(heads, k, name) {
  if (heads.length === 1) return `head ${name(heads[0])}`;
  if (heads.length === k.numHeads) return `all ${heads.length} heads`;
  return `heads ${heads.map(name).join(", ")}`;
}

function esc(s) {
  return String(s).replace(/[<>&]/g, (c) => ({ "<": "&lt;", ">": "&gt;", "&": "&amp;" })[c]);
}
