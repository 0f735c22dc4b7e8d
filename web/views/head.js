// Head view: two columns of tokens, lines from each query (left) to the keys it attends to
// (right); opacity = weight, one colour per head. Canvas only; long inputs draw only the rows in
// view (virtualized) and take their lines from each head's top-k keys per query.
import { headColor } from "../colors.js";
import { getViews, views } from "../data.js";

export const FULL_LIMIT = 256; // up to this length every (query, key) weight is fetched
export const TOPK = 16; // beyond it, each query's 16 strongest keys per head
const ROW = 18;
const MIN_WEIGHT = 0.004;

// ---- data -----------------------------------------------------------------------------------
// edges[h][q] = { keys: Int32Array, weights: Float32Array }: the lines of head h from query q.
export async function loadLayer(info, kind, layer, queryTokens, keyTokens) {
  const lq = queryTokens.length;
  const lk = keyTokens.length;
  const heads = info.numHeads;
  const edges = [];
  if (lq <= FULL_LIMIT && lk <= FULL_LIMIT) {
    const requested = [];
    for (let h = 0; h < heads; h++) requested.push(views.tile(layer, h, null, null, kind));
    const { tensors } = await getViews(info.traceId, requested);
    for (let h = 0; h < heads; h++) {
      const p = tensors[`tile/${h}`].data;
      const perQuery = [];
      for (let q = 0; q < lq; q++) {
        const keys = [];
        const weights = [];
        for (let k = 0; k < lk; k++) {
          const w = p[q * lk + k];
          if (w >= MIN_WEIGHT) {
            keys.push(k);
            weights.push(w);
          }
        }
        perQuery.push({ keys: Int32Array.from(keys), weights: Float32Array.from(weights) });
      }
      edges.push(perQuery);
    }
    return { edges, exact: true, lq, lk };
  }
  const k = Math.min(TOPK, lk);
  const requested = [];
  for (let h = 0; h < heads; h++) requested.push(views.topk(layer, h, k, null, kind));
  const { tensors } = await getViews(info.traceId, requested);
  for (let h = 0; h < heads; h++) {
    const idx = tensors[`topk/${h}/indices`].data;
    const probs = tensors[`topk/${h}/probs`].data;
    const perQuery = [];
    for (let q = 0; q < lq; q++) {
      const keys = [];
      const weights = [];
      for (let j = 0; j < k; j++) {
        const key = Number(idx[q * k + j]);
        if (key >= 0 && probs[q * k + j] >= MIN_WEIGHT) {
          keys.push(key);
          weights.push(probs[q * k + j]);
        }
      }
      perQuery.push({ keys: Int32Array.from(keys), weights: Float32Array.from(weights) });
    }
    edges.push(perQuery);
  }
  return { edges, exact: false, lq, lk };
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

// ---- mounting: DOM, events, fetching -----------------------------------------------------------
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
      <canvas class="minimap" width="16" title="click to jump"></canvas>
    </div>
    <div class="tooltip" hidden></div>`;
  const $ = (sel) => root.querySelector(sel);
  const canvas = $(".lines");
  const scroller = $(".scroller");
  const minimap = $(".minimap");
  const tooltip = $(".tooltip");
  let current = null; // { key, data, info, queryTokens, keyTokens }
  let hidden = new Set();
  let appliedHeads = false; // state.heads (a starting selection) is applied once
  let hover = null;
  let lastDrawMs = 0;

  function headsShown(info) {
    const s = app.state;
    const all = [...Array(info.numHeads).keys()];
    if (s.head >= 0 && s.head < info.numHeads) return [s.head];
    return all.filter((h) => !hidden.has(h));
  }

  function model() {
    const s = app.state;
    const width = scroller.clientWidth || 600;
    const height = scroller.clientHeight || 400;
    const lay = layout(width, current.queryTokens);
    const scroll = scroller.scrollTop;
    const first = Math.max(0, Math.floor(scroll / lay.row) - 1);
    const last = Math.min(current.queryTokens.length, Math.ceil((scroll + height) / lay.row) + 1);
    const lastKey = Math.min(current.keyTokens.length, Math.ceil((scroll + height) / lay.row) + 1);
    return {
      lay, first, last, firstKey: first, lastKey, scroll, height, hover, pinned: s.query,
      heads: headsShown(current.info), data: current.data, filter: s.filter,
      bStart: s.kind === "cross" ? -1 : current.info.sentenceBStart,
      queryTokens: current.queryTokens, keyTokens: current.keyTokens,
      textColor: getComputedStyle(document.body).getPropertyValue("--fg").trim() || "#222",
    };
  }

  function redraw() {
    if (!current) return;
    const t0 = performance.now();
    const dpr = window.devicePixelRatio || 1;
    const m = model();
    canvas.style.height = `${m.height}px`;
    canvas.width = Math.round(m.lay.width * dpr);
    canvas.height = Math.round(m.height * dpr);
    const ctx = canvas.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    draw(ctx, m);
    drawMinimap(m);
    lastDrawMs = performance.now() - t0;
    window.attnscopeTimings = { ...(window.attnscopeTimings || {}), headDrawMs: lastDrawMs };
  }

  function drawMinimap(m) {
    const rows = Math.max(current.queryTokens.length, current.keyTokens.length);
    const h = scroller.clientHeight || 400;
    minimap.height = h;
    minimap.style.height = `${h}px`;
    const ctx = minimap.getContext("2d");
    ctx.clearRect(0, 0, minimap.width, h);
    ctx.fillStyle = "rgba(127,127,127,0.25)";
    ctx.fillRect(0, 0, minimap.width, h);
    ctx.fillStyle = "rgba(31,119,180,0.6)";
    const top = (m.scroll / (rows * m.lay.row)) * h;
    ctx.fillRect(0, top, minimap.width, Math.max(4, (m.height / (rows * m.lay.row)) * h));
  }

  function hitTest(event) {
    const rect = canvas.getBoundingClientRect();
    const x = event.clientX - rect.left;
    const yPos = event.clientY - rect.top + scroller.scrollTop;
    const index = Math.floor(yPos / ROW);
    const lay = layout(scroller.clientWidth || 600, current.queryTokens);
    if (x < lay.leftX && index < current.queryTokens.length) return { side: "left", index };
    if (x > lay.rightX && index < current.keyTokens.length) return { side: "right", index };
    return null;
  }

  function showTooltip(event) {
    const s = app.state;
    const query = hover?.side === "left" ? hover.index : s.query;
    if (!hover || query < 0 || hover.side !== "right") {
      tooltip.hidden = true;
      return;
    }
    const lines = headsShown(current.info).map((h) => {
      const w = weightOf(current.data, h, query, hover.index);
      return `<div><span class="swatch" style="background:${headColor(h)}"></span>head ${h}: ${w ? w.toFixed(4) : current.data.exact ? "0" : "< top-k"}</div>`;
    });
    tooltip.innerHTML = `<div>${escapeHtml(current.queryTokens[query])} → ${escapeHtml(current.keyTokens[hover.index])}</div>${lines.join("")}`;
    tooltip.style.left = `${event.clientX + 12}px`;
    tooltip.style.top = `${event.clientY + 12}px`;
    tooltip.hidden = false;
  }

  canvas.addEventListener("mousemove", (event) => {
    if (!current) return;
    const t0 = performance.now();
    const hit = hitTest(event);
    if (JSON.stringify(hit) !== JSON.stringify(hover)) {
      hover = hit;
      redraw();
      window.attnscopeTimings = { ...(window.attnscopeTimings || {}), hoverMs: performance.now() - t0 };
    }
    showTooltip(event);
  });
  canvas.addEventListener("mouseleave", () => {
    hover = null;
    tooltip.hidden = true;
    redraw();
  });
  canvas.addEventListener("click", (event) => {
    const hit = current && hitTest(event);
    if (hit?.side === "left") app.update({ query: app.state.query === hit.index ? -1 : hit.index });
  });
  scroller.addEventListener("scroll", () => requestAnimationFrame(redraw));
  minimap.addEventListener("click", (event) => {
    const rect = minimap.getBoundingClientRect();
    const rows = Math.max(current.queryTokens.length, current.keyTokens.length);
    scroller.scrollTop = ((event.clientY - rect.top) / rect.height) * rows * ROW - scroller.clientHeight / 2;
  });
  $(".layer").addEventListener("change", (e) => app.update({ layer: Number(e.target.value) }));
  $(".kind").addEventListener("change", (e) => app.update({ kind: e.target.value }));
  $(".filter").addEventListener("change", (e) => app.update({ filter: e.target.value }));

  function drawHeadSquares(info) {
    const box = $(".heads");
    box.replaceChildren();
    for (let h = 0; h < info.numHeads; h++) {
      const sq = document.createElement("span");
      const shown = headsShown(info).includes(h);
      sq.className = `head-square${shown ? "" : " off"}`;
      sq.style.background = headColor(h);
      sq.dataset.head = String(h);
      sq.title = `head ${h}`;
      sq.addEventListener("click", () => {
        if (app.state.head >= 0) {
          hidden = new Set([...Array(info.numHeads).keys()].filter((x) => x !== app.state.head));
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

  async function render(info) {
    const s = app.state;
    const kinds = info.kinds;
    const kind = kinds.includes(s.kind) ? s.kind : kinds[0];
    const layer = Math.min(Math.max(0, s.layer), info.numLayers - 1);
    const key = `${info.traceId}/${kind}/${layer}`;
    $(".layer").replaceChildren(...[...Array(info.numLayers).keys()].map((l) => new Option(`${l}`, l, false, l === layer)));
    $(".kind-label").hidden = kinds.length < 2;
    $(".kind").replaceChildren(...kinds.map((k) => new Option(k, k, false, k === kind)));
    $(".filter-label").hidden = info.sentenceBStart < 0 || kind === "cross";
    $(".filter").value = s.filter;
    if (s.heads && !appliedHeads) {
      const shown = new Set(s.heads.split(",").map(Number));
      hidden = new Set([...Array(info.numHeads).keys()].filter((h) => !shown.has(h)));
    }
    appliedHeads = true;
    drawHeadSquares(info);
    if (!current || current.key !== key) {
      const decoderSide = kind !== "encoder" && info.targetTokens.length > 0;
      const queryTokens = decoderSide ? info.targetTokens : info.tokens;
      const keyTokens = kind === "cross" ? info.tokens : queryTokens;
      const data = await app.busy(loadLayer(info, kind, layer, queryTokens, keyTokens));
      current = { key, data, info, queryTokens, keyTokens };
      const rows = Math.max(queryTokens.length, keyTokens.length);
      $(".spacer").style.height = `${rows * ROW}px`;
      $(".note").textContent = data.exact ? "" : `${queryTokens.length} tokens: lines show each query's top ${TOPK} keys per head`;
    }
    current.info = info;
    redraw();
  }

  return {
    render,
    exportPng: () => canvas,
    exportSvg: () => (current && current.data.exact ? toSvg({ ...model(), data: current.data }) : null),
    exportJson: () => current && { layer: app.state.layer, kind: app.state.kind, exact: current.data.exact,
      queryTokens: current.queryTokens, keyTokens: current.keyTokens,
      edges: current.data.edges.map((perQuery) => perQuery.map((e) => ({ keys: [...e.keys], weights: [...e.weights] }))) },
  };
}

function escapeHtml(s) {
  return s.replace(/[<>&]/g, (c) => ({ "<": "&lt;", ">": "&gt;", "&": "&amp;" })[c]);
}
