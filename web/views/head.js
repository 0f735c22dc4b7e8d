// Head view: two columns of tokens, lines from each query (left) to the keys it attends to
// (right); opacity = weight, one colour per head. Canvas only; long inputs draw only the rows in
// view (virtualized) and take their lines from each head's top-k keys per query. How long is
// "long" and how many keys (ViewerDefaults.full_attention_tokens, head_view_top_k) come from the
// service's GetServerInfo.
import { headColor } from "../colors.js";
import { getViews, views } from "../data.js";
import { mountImagePanel } from "./image.js";

const ROW = 18;
const MIN_WEIGHT = 0.004;
const MINIMAP_WIDTH = 16;

// ---- data -----------------------------------------------------------------------------------
// edges[h][q] = { keys: Int32Array, weights: Float32Array }: the lines of head h from query q.
// `k`: the KindInfo (data.js) of the attention shown; `viewer`: ServerInfo's viewer defaults.
export async function loadLayer(traceId, k, layer, viewer) {
  const lq = k.queryLen;
  const lk = k.keyLen;
  const heads = k.numHeads;
  const edges = [];
  if (lq <= viewer.fullAttentionTokens && lk <= viewer.fullAttentionTokens) {
    const requested = [];
    for (let h = 0; h < heads; h++) requested.push(views.tile(`head/${h}`, layer, h, null, null, k.kind));
    const { tensors } = await getViews(traceId, requested);
    for (let h = 0; h < heads; h++) {
      const p = tensors[`head/${h}`].data;
      const perQuery = [];
      for (let q = 0; q < lq; q++) {
        const keys = [];
        const weights = [];
        for (let j = 0; j < lk; j++) {
          const w = p[q * lk + j];
          if (w >= MIN_WEIGHT) {
            keys.push(j);
            weights.push(w);
          }
        }
        perQuery.push({ keys: Int32Array.from(keys), weights: Float32Array.from(weights) });
      }
      edges.push(perQuery);
    }
    return { edges, exact: true, lq, lk, topK: 0 };
  }
  const topK = Math.min(viewer.headViewTopK, lk);
  const requested = [];
  for (let h = 0; h < heads; h++) requested.push(views.topk(`top/${h}`, layer, h, topK, null, k.kind));
  const { tensors } = await getViews(traceId, requested);
  for (let h = 0; h < heads; h++) {
    const idx = tensors[`top/${h}/indices`].data;
    const probs = tensors[`top/${h}/probs`].data;
    const perQuery = [];
    for (let q = 0; q < lq; q++) {
      const keys = [];
      const weights = [];
      for (let j = 0; j < topK; j++) {
        const key = Number(idx[q * topK + j]);
        if (key >= 0 && probs[q * topK + j] >= MIN_WEIGHT) {
          keys.push(key);
          weights.push(probs[q * topK + j]);
        }
      }
      perQuery.push({ keys: Int32Array.from(keys), weights: Float32Array.from(weights) });
    }
    edges.push(perQuery);
  }
  return { edges, exact: false, lq, lk, topK };
}

export function weightOf(layerData, head, query, key) {
  const e = layerData.edges[head][query];
  for (let i = 0; i < e.keys.length; i++) if (e.keys[i] === key) return e.weights[i];
  return 0;
}

// ---- drawing (pure: everything it needs comes in `model`) ------------------------------------
export function layout(width, queryTokens) {
  const textWidth = Math.min(200, Math.max(60, width * 0.25));
  return { width, row: ROW, leftX: textWidth, rightX: width - textWidth, textWidth };
}

function inFilter(filter, bStart, q, k) {
  if (filter === "all" || bStart < 0) return true;
  const qa = q < bStart;
  const ka = k < bStart;
  return { AA: qa && ka, AB: qa && !ka, BA: !qa && ka, BB: !qa && !ka }[filter] ?? true;
}

export function draw(ctx, m) {
  const { lay, first, last, scroll, height } = m;
  ctx.clearRect(0, 0, lay.width, height);
  ctx.font = "13px system-ui, sans-serif";
  ctx.textBaseline = "middle";
  const y = (i) => i * lay.row + lay.row / 2 - scroll;
  const focusQuery = m.hover?.side === "left" ? m.hover.index : m.pinned >= 0 ? m.pinned : -1;
  const focusKey = m.hover?.side === "right" ? m.hover.index : -1;
  // Lines, head by head.
  for (const h of m.heads) {
    ctx.strokeStyle = headColor(h);
    const qs = focusQuery >= 0 ? [focusQuery] : range(first, last);
    for (const q of qs) {
      const e = m.data.edges[h][q];
      for (let i = 0; i < e.keys.length; i++) {
        const k = e.keys[i];
        if (focusKey >= 0 && k !== focusKey) continue;
        if (!inFilter(m.filter, m.bStart, q, k)) continue;
        ctx.globalAlpha = Math.min(1, e.weights[i]);
        ctx.lineWidth = 2;
        ctx.beginPath();
        ctx.moveTo(lay.leftX + 4, y(q));
        ctx.lineTo(lay.rightX - 4, y(k));
        ctx.stroke();
      }
    }
  }
  ctx.globalAlpha = 1;
  // Per-head weight boxes beside the keys of a focused query (bertviz's hover boxes).
  if (focusQuery >= 0) {
    const box = Math.max(3, Math.min(10, (lay.textWidth - 10) / Math.max(1, m.heads.length)));
    for (let k = m.firstKey; k < m.lastKey; k++) {
      m.heads.forEach((h, n) => {
        const w = weightOf(m.data, h, focusQuery, k);
        if (w <= 0) return;
        ctx.globalAlpha = Math.min(1, w);
        ctx.fillStyle = headColor(h);
        ctx.fillRect(lay.rightX + 4 + n * box, y(k) - lay.row / 2 + 3, box - 1, lay.row - 6);
      });
    }
    ctx.globalAlpha = 1;
  }
  // Tokens.
  ctx.fillStyle = m.textColor;
  ctx.textAlign = "right";
  for (let q = first; q < last; q++) {
    ctx.font = q === focusQuery ? "bold 13px system-ui, sans-serif" : "13px system-ui, sans-serif";
    ctx.fillText(m.queryTokens[q], lay.leftX - 6, y(q), lay.textWidth - 8);
  }
  ctx.textAlign = "left";
  const boxesWidth = focusQuery >= 0 ? Math.min(lay.textWidth - 10, m.heads.length * 10) + 8 : 6;
  for (let k = m.firstKey; k < m.lastKey; k++) {
    ctx.font = k === focusKey ? "bold 13px system-ui, sans-serif" : "13px system-ui, sans-serif";
    ctx.fillText(m.keyTokens[k], lay.rightX + boxesWidth, y(k), lay.textWidth - boxesWidth);
  }
}

function range(a, b) {
  const out = [];
  for (let i = a; i < b; i++) out.push(i);
  return out;
}

// SVG of the same picture (short inputs), for export.
export function toSvg(m) {
  const rows = Math.max(m.queryTokens.length, m.keyTokens.length);
  const height = rows * m.lay.row + 4;
  const y = (i) => i * m.lay.row + m.lay.row / 2;
  const esc = (s) => s.replace(/[<>&"]/g, (c) => ({ "<": "&lt;", ">": "&gt;", "&": "&amp;", '"': "&quot;" })[c]);
  const parts = [`<svg xmlns="http://www.w3.org/2000/svg" width="${m.lay.width}" height="${height}" font-family="sans-serif" font-size="13">`];
  for (const h of m.heads) {
    for (let q = 0; q < m.queryTokens.length; q++) {
      const e = m.data.edges[h][q];
      for (let i = 0; i < e.keys.length; i++) {
        if (!inFilter(m.filter, m.bStart, q, e.keys[i])) continue;
        parts.push(`<line x1="${m.lay.leftX + 4}" y1="${y(q)}" x2="${m.lay.rightX - 4}" y2="${y(e.keys[i])}" stroke="${headColor(h)}" stroke-width="2" stroke-opacity="${Math.min(1, e.weights[i]).toFixed(4)}"/>`);
      }
    }
  }
  m.queryTokens.forEach((t, i) => parts.push(`<text x="${m.lay.leftX - 6}" y="${y(i) + 4}" text-anchor="end">${esc(t)}</text>`));
  m.keyTokens.forEach((t, i) => parts.push(`<text x="${m.lay.rightX + 6}" y="${y(i) + 4}">${esc(t)}</text>`));
  parts.push("</svg>");
  return parts.join("\n");
}

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
      <aside class="image-panel" hidden></aside>
    </div>
    <div class="tooltip" hidden></div>`;
  const $ = (sel) => root.querySelector(sel);
  const canvas = $(".lines");
  const scroller = $(".scroller");
  const minimap = $(".minimap");
  const tooltip = $(".tooltip");
  const imagePanel = mountImagePanel($(".image-panel"), app);
  minimap.style.width = `${MINIMAP_WIDTH}px`; // before the first layout: the scroller takes the rest
  let current = null; // { key, data, k: KindInfo, layer, image }: what is drawn (image: the input's, or null)
  let hidden = new Set();
  let appliedHeads = false; // state.heads (a starting selection) is applied once
  let hover = null; // { side: "left" | "right", index }
  let pointer = null; // the last mouse position over the canvas (for the tooltip)
  let hoverAt = 0; // when the hover changed (performance.now()), for the hover timing

  function headsShown(k) {
    const s = app.state;
    const all = [...Array(k.numHeads).keys()];
    if (s.head >= 0 && s.head < k.numHeads) return [s.head];
    return all.filter((h) => !hidden.has(h));
  }

  function model() {
    const s = app.state;
    const width = scroller.clientWidth || 600;
    const height = scroller.clientHeight || 400;
    const lay = layout(width, current.k.queryTokens);
    const scroll = scroller.scrollTop;
    const first = Math.max(0, Math.floor(scroll / lay.row) - 1);
    const last = Math.min(current.k.queryLen, Math.ceil((scroll + height) / lay.row) + 1);
    const lastKey = Math.min(current.k.keyLen, Math.ceil((scroll + height) / lay.row) + 1);
    return {
      lay, first, last, firstKey: first, lastKey, scroll, height, hover, pinned: s.query,
      heads: headsShown(current.k), data: current.data, filter: s.filter, bStart: current.k.sentenceBStart,
      queryTokens: current.k.queryTokens, keyTokens: current.k.keyTokens,
      textColor: getComputedStyle(document.body).getPropertyValue("--fg").trim() || "#222",
    };
  }

  // One frame: size the canvases to their CSS boxes × devicePixelRatio, draw, place the tooltip.
  function frame() {
    if (!current || root.hidden || root.offsetParent === null) return;
    const t0 = performance.now();
    const dpr = window.devicePixelRatio || 1;
    const m = model();
    canvas.style.width = `${m.lay.width}px`;
    canvas.style.height = `${m.height}px`;
    canvas.width = Math.round(m.lay.width * dpr);
    canvas.height = Math.round(m.height * dpr);
    const ctx = canvas.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    draw(ctx, m);
    canvas.dataset.drawn = JSON.stringify({ kind: current.k.kind, layer: current.layer, first: m.first }); // for tests and tools
    drawMinimap(m, dpr);
    drawImage(m);
    showTooltip();
    const done = performance.now();
    const timings = { ...(window.attnscopeTimings || {}), headDrawMs: done - t0 };
    if (hoverAt) timings.hoverMs = done - hoverAt; // from the mousemove to the redrawn canvas
    hoverAt = 0;
    window.attnscopeTimings = timings;
  }

  function drawMinimap(m, dpr) {
    const rows = Math.max(current.k.queryLen, current.k.keyLen);
    const h = scroller.clientHeight || 400;
    minimap.style.width = `${MINIMAP_WIDTH}px`;
    minimap.style.height = `${h}px`;
    minimap.width = Math.round(MINIMAP_WIDTH * dpr);
    minimap.height = Math.round(h * dpr);
    const ctx = minimap.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, MINIMAP_WIDTH, h);
    ctx.fillStyle = "rgba(127,127,127,0.25)";
    ctx.fillRect(0, 0, MINIMAP_WIDTH, h);
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
    const yPos = event.clientY - rect.top + scroller.scrollTop;
    const index = Math.floor(yPos / ROW);
    const lay = layout(scroller.clientWidth || 600, current.k.queryTokens);
    if (x < lay.leftX && index < current.k.queryLen) return { side: "left", index };
    if (x > lay.rightX && index < current.k.keyLen) return { side: "right", index };
    return null;
  }

  function showTooltip() {
    const s = app.state;
    const query = hover?.side === "left" ? hover.index : s.query;
    if (!hover || !pointer || query < 0 || hover.side !== "right") {
      tooltip.hidden = true;
      return;
    }
    const { k, data } = current;
    const lines = headsShown(k).map((h) => {
      const w = weightOf(data, h, query, hover.index);
      return `<div><span class="swatch" style="background:${headColor(h)}"></span>head ${h}: ${w ? w.toFixed(4) : data.exact ? "0" : "< top-k"}</div>`;
    });
    tooltip.innerHTML = `<div>${escapeHtml(k.queryTokens[query])} → ${escapeHtml(k.keyTokens[hover.index])}</div>${lines.join("")}`;
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
    const rows = Math.max(current.k.queryLen, current.k.keyLen);
    scroller.scrollTop = ((event.clientY - rect.top) / rect.height) * rows * ROW - scroller.clientHeight / 2;
  });
  $(".layer").addEventListener("change", (e) => app.update({ layer: Number(e.target.value) }));
  $(".kind").addEventListener("change", (e) => app.update({ kind: e.target.value }));
  $(".filter").addEventListener("change", (e) => app.update({ filter: e.target.value }));

  function drawHeadSquares(k) {
    const box = $(".heads");
    box.replaceChildren();
    for (let h = 0; h < k.numHeads; h++) {
      const sq = document.createElement("span");
      const shown = headsShown(k).includes(h);
      sq.className = `head-square${shown ? "" : " off"}`;
      sq.style.background = headColor(h);
      sq.dataset.head = String(h);
      sq.title = `head ${h}`;
      sq.addEventListener("click", () => {
        if (app.state.head >= 0) {
          hidden = new Set([...Array(k.numHeads).keys()].filter((x) => x !== app.state.head));
          app.update({ head: -1 });
        }
        if (hidden.has(h)) hidden.delete(h);
        else hidden.add(h);
        app.update({});
      });
      sq.addEventListener("dblclick", () => {
        hidden = new Set();
        app.update({ head: app.state.head === h ? -1 : h });
      });
      box.append(sq);
    }
  }

  // Load what the state asks for (unless loaded), then, if no newer render started, draw it.
  async function render(info, fresh) {
    const s = app.state;
    const viewer = app.server.viewer;
    const k = info.kind(s.kind);
    const layer = Math.min(Math.max(0, s.layer), k.numLayers - 1);
    const key = `${info.traceId}/${k.kind}/${layer}`;
    let shown = current?.key === key ? current : null;
    if (!shown) {
      const data = await app.busy(loadLayer(info.traceId, k, layer, viewer));
      if (!fresh()) return;
      shown = { key, data, k, layer, image: info.image || null };
    }
    current = shown;
    $(".layer").replaceChildren(...[...Array(k.numLayers).keys()].map((l) => new Option(`${l}`, l, false, l === layer)));
    $(".kind-label").hidden = info.kinds.length < 2;
    $(".kind").replaceChildren(...info.kindNames.map((n) => new Option(n, n, false, n === k.kind)));
    $(".filter-label").hidden = k.sentenceBStart < 0;
    $(".filter").value = s.filter;
    if (s.heads && !appliedHeads) {
      const visible = new Set(s.heads.split(",").map(Number));
      hidden = new Set([...Array(k.numHeads).keys()].filter((h) => !visible.has(h)));
    }
    appliedHeads = true;
    drawHeadSquares(k);
    $(".spacer").style.height = `${Math.max(k.queryLen, k.keyLen) * ROW}px`;
    $(".note").textContent = current.data.exact ? "" : `${k.queryLen} tokens: lines show each query's top ${current.data.topK} keys per head`;
    frame();
  }

  return {
    render,
    exportPng: () => canvas,
    exportSvg: () => (current && current.data.exact ? toSvg({ ...model(), data: current.data }) : null),
    exportJson: () => current && { layer: current.layer, kind: current.k.kind, exact: current.data.exact,
      queryTokens: current.k.queryTokens, keyTokens: current.k.keyTokens,
      edges: current.data.edges.map((perQuery) => perQuery.map((e) => ({ keys: [...e.keys], weights: [...e.weights] }))) },
  };
}

function escapeHtml(s) {
  return s.replace(/[<>&]/g, (c) => ({ "<": "&lt;", ">": "&gt;", "&": "&amp;" })[c]);
}
