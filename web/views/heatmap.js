// The model view's detail of one head: a zoomable heatmap of its attention with token axes, a
// colour legend, the exact value on hover and the selected cell outlined. Scroll to zoom, drag to
// pan, click a cell to select it (and pin its query); regions of at most tile_size × tile_size
// positions are fetched as exact tiles from the kept trace (no model re-run), larger ones are
// drawn from the pooled map (then labelled so).
import { heat } from "../colors.js";
import { getViews, views } from "../data.js";
import { escapeHtml, formatValue, matches, themeColor, tokenLabel } from "../format.js";
import { picture, sizeCanvas } from "../canvas.js";
import { drawLegend } from "../legend.js";
import { generations } from "../state.js";
import { drawAxes, outlineCell } from "./axes.js";

const TILE_DELAY_MS = 150; // a zoom or pan that rests this long gets its exact tile
const LEFT = 96; // room for query labels
const TOP = 92; // room for rotated key labels
const BOTTOM = 34; // the legend

export function paintMatrix(image, values, rows, cols, dark) {
  // values: rows × cols probabilities -> RGBA pixels of `image` (ImageData rows × cols).
  const px = image.data;
  for (let i = 0; i < rows * cols; i++) {
    const [r, g, b] = heat(values[i], dark);
    px[4 * i] = r;
    px[4 * i + 1] = g;
    px[4 * i + 2] = b;
    px[4 * i + 3] = 255;
  }
  return image;
}

export function weightLegend(dark) {
  return { kind: "scale", label: "weight (√ scale)", lo: 0, hi: 1, color: (t) => `rgb(${heat(t * t, dark).join(",")})` };
}

// The value at (q, k): exact (from the tile or an exact pooled map) or the pooled block's mean.
function valueAt(z, lq, lk, q, k) {
  const [q0, , k0, k1] = z.region;
  if (z.tile && z.tileRegion.join() === z.region.join()) return z.tile[(q - q0) * (k1 - k0) + (k - k0)];
  const r = Math.min(z.rows - 1, Math.floor((q * z.rows) / lq));
  const c = Math.min(z.cols - 1, Math.floor((k * z.cols) / lk));
  return z.base[r * z.cols + c];
}

export function drawHeatmap(ctx, m) {
  const { size, region, z, lq, lk } = m;
  const [q0, q1, k0, k1] = region;
  const values = new Float32Array(size * size);
  for (let py = 0; py < size; py++) {
    const q = q0 + Math.floor(((py + 0.5) * (q1 - q0)) / size);
    for (let px = 0; px < size; px++) values[py * size + px] = valueAt(z, lq, lk, q, k0 + Math.floor(((px + 0.5) * (k1 - k0)) / size));
  }
  const pixels = document.createElement("canvas");
  pixels.width = size;
  pixels.height = size;
  pixels.getContext("2d").putImageData(paintMatrix(new ImageData(size, size), values, size, size, m.dark), 0, 0);
  if (m.background) {
    ctx.fillStyle = m.background;
    ctx.fillRect(0, 0, m.width, m.height);
  } else ctx.clearRect(0, 0, m.width, m.height);
  ctx.imageSmoothingEnabled = false;
  ctx.drawImage(pixels, LEFT, TOP, size, size);
  const box = { x: LEFT, y: TOP, size: [size, size], rows: [q0, q1], cols: [k0, k1] };
  drawAxes(ctx, { ...box, rowTokens: m.k.queryTokens, colTokens: m.k.keyTokens, rowTitle: "queries", colTitle: "keys", textColor: m.textColor, matchColor: m.matchColor, found: m.found });
  if (m.selected) outlineCell(ctx, box, m.selected.q, m.selected.k, m.selectedColor);
  drawLegend(ctx, weightLegend(m.dark), LEFT, TOP + size + 2, m.textColor);
}

// The detail in `root`; `app` as the views get it. show(z) sets the head, frame() draws.
export function mountHeatmap(root, app) {
  root.innerHTML = `
    <div class="controls"><strong class="heat-title"></strong>
      <button class="open-head" type="button" title="this head in the head view">open in head view</button>
      <button class="reset" type="button">reset zoom</button></div>
    <div class="region"></div>
    <canvas class="heatmap" title="scroll to zoom, drag to pan, click a cell to select it"></canvas>
    <div class="tooltip" hidden></div>`;
  const $ = (sel) => root.querySelector(sel);
  const canvas = $(".heatmap");
  const tooltip = $(".tooltip");
  let z = null; // { key, traceId, k, layer, head, base, rows, cols, region, tile, tileRegion, exactNow }
  let selected = null; // { q, k }
  let size = 0;
  let tileTimer = null;
  let cancelTile = () => {};
  const tileLoads = generations();
  window.attnscopeTimings = { ...(window.attnscopeTimings || {}), tileFetches: 0 };

  $(".reset").addEventListener("click", () => {
    if (z) z.region = [0, z.k.queryLen, 0, z.k.keyLen];
    app.invalidate(frame);
  });
  $(".open-head").addEventListener("click", () => z && app.update({ view: "head", layer: z.layer, head: z.head }));

  function exactOf(zz) {
    const pooledIsExact = zz.rows === zz.k.queryLen && zz.cols === zz.k.keyLen;
    const tiled = Boolean(zz.tile) && zz.tileRegion.join() === zz.region.join();
    return { pooledIsExact, tiled, exact: pooledIsExact || tiled };
  }

  function model(background) {
    const dark = app.state.theme === "dark";
    return {
      size, region: z.region, z, lq: z.k.queryLen, lk: z.k.keyLen, k: z.k, dark, selected, background,
      width: LEFT + size + 8, height: TOP + size + BOTTOM,
      textColor: themeColor("--fg", "#222"), matchColor: themeColor("--match", "#ffd54a"), selectedColor: themeColor("--selected", "#d62728"),
      found: new Set([...matches(z.k.queryTokens, app.state.search), ...matches(z.k.keyTokens, app.state.search)]),
    };
  }

  let width = 600; // CSS pixels the detail may take (the model view says, frame(width))
  function frame(available) {
    if (!z || root.offsetParent === null) return;
    if (typeof available === "number") width = available;
    size = Math.min(app.server.viewer.tileSize || 512, Math.max(160, Math.min(width, window.innerWidth - 40) - LEFT - 16));
    const m = model();
    drawHeatmap(sizeCanvas(canvas, m.width, m.height), m);
    const [q0, q1, k0, k1] = z.region;
    const e = exactOf(z);
    const how = e.tiled ? "(exact tile)" : e.pooledIsExact ? "(exact: every position)" : "(pooled: each cell a block's mean; zoom in for exact values)";
    $(".region").textContent = `queries ${q0}–${q1 - 1}, keys ${k0}–${k1 - 1} ${how}`;
    canvas.dataset.layout = JSON.stringify({ left: LEFT, top: TOP, size }); // for tests and tools
    showTip();
    loadTileSoon();
  }

  // The matrix cell under a mouse event: { q, k, fx, fy } or null.
  function cellAt(event) {
    const rect = canvas.getBoundingClientRect();
    const fx = (event.clientX - rect.left - LEFT) / size;
    const fy = (event.clientY - rect.top - TOP) / size;
    if (fx < 0 || fy < 0 || fx >= 1 || fy >= 1) return null;
    const [q0, q1, k0, k1] = z.region;
    return { q: q0 + Math.floor(fy * (q1 - q0)), k: k0 + Math.floor(fx * (k1 - k0)), fx, fy };
  }

  let pointer = null;
  function showTip() {
    const hit = pointer && cellAt(pointer);
    if (!hit) {
      tooltip.hidden = true;
      return;
    }
    const { exact } = exactOf(z);
    const v = valueAt(z, z.k.queryLen, z.k.keyLen, hit.q, hit.k);
    const what = exact ? formatValue(v) : `${formatValue(v)} (pooled block mean)`;
    tooltip.innerHTML = `${escapeHtml(tokenLabel(z.k.queryTokens, hit.q))} (${hit.q}) → ${escapeHtml(tokenLabel(z.k.keyTokens, hit.k))} (${hit.k}): <b>${what}</b>`;
    tooltip.style.left = `${pointer.clientX + 12}px`;
    tooltip.style.top = `${pointer.clientY + 12}px`;
    tooltip.hidden = false;
  }

  function loadTileSoon() {
    cancelTile();
    const [q0, q1, k0, k1] = z.region;
    const limit = app.server.viewer.tileSize;
    const e = exactOf(z);
    if (e.exact || q1 - q0 > limit || k1 - k0 > limit) return;
    const target = z;
    const region = [...z.region];
    const g = tileLoads.start();
    app.track(new Promise((resolve) => {
      let fired = false;
      cancelTile = () => {
        if (fired) return;
        clearTimeout(tileTimer);
        resolve();
      };
      tileTimer = setTimeout(async () => {
        fired = true;
        try {
          const { tensors } = await getViews(target.traceId, [views.tile("zoom", target.layer, target.head, [q0, q1], [k0, k1], target.k.kind)]);
          if (!tileLoads.isCurrent(g) || z !== target) return;
          window.attnscopeTimings.tileFetches += 1;
          target.tile = tensors.zoom.data;
          target.tileRegion = region;
          app.invalidate(frame);
        } catch (err) {
          if (tileLoads.isCurrent(g)) app.fail(err);
        } finally {
          resolve();
        }
      }, TILE_DELAY_MS);
    }));
  }

  canvas.addEventListener("wheel", (event) => {
    const hit = z && cellAt(event);
    if (!hit) return;
    event.preventDefault();
    const factor = event.deltaY < 0 ? 0.5 : 2;
    const [q0, q1, k0, k1] = z.region;
    const zoomAxis = (a, b, f, n) => {
      const span = Math.max(1, Math.min(n, Math.round((b - a) * factor)));
      const center = a + f * (b - a);
      const start = Math.max(0, Math.min(n - span, Math.round(center - f * span)));
      return [start, start + span];
    };
    z.region = [...zoomAxis(q0, q1, hit.fy, z.k.queryLen), ...zoomAxis(k0, k1, hit.fx, z.k.keyLen)];
    app.invalidate(frame);
  }, { passive: false });

  let drag = null;
  canvas.addEventListener("mousedown", (event) => {
    drag = { x: event.clientX, y: event.clientY, region: [...(z?.region || [])], moved: false };
  });
  window.addEventListener("mouseup", () => { setTimeout(() => { drag = null; }, 0); });
  canvas.addEventListener("mousemove", (event) => {
    pointer = event;
    if (!z) return;
    if (drag && event.buttons) {
      const [q0, q1, k0, k1] = drag.region;
      const dq = Math.round(((drag.y - event.clientY) / size) * (q1 - q0));
      const dk = Math.round(((drag.x - event.clientX) / size) * (k1 - k0));
      if (dq || dk) drag.moved = true;
      const sq = Math.max(-q0, Math.min(z.k.queryLen - q1, dq));
      const sk = Math.max(-k0, Math.min(z.k.keyLen - k1, dk));
      z.region = [q0 + sq, q1 + sq, k0 + sk, k1 + sk];
    }
    app.invalidate(frame);
  });
  canvas.addEventListener("mouseleave", () => {
    pointer = null;
    app.invalidate(frame);
  });
  canvas.addEventListener("click", (event) => {
    const hit = z && cellAt(event);
    if (!hit || drag?.moved) return;
    selected = { q: hit.q, k: hit.k };
    app.update({ query: hit.q });
  });

  // Show head `next` ({ key, traceId, k, layer, head, base, rows, cols }); the zoom resets when it changes.
  function show(next, layerName) {
    if (z?.key !== next.key) {
      z = { ...next, region: [0, next.k.queryLen, 0, next.k.keyLen], tile: null, tileRegion: null };
      selected = null;
    }
    if (app.state.query >= 0 && selected?.q !== app.state.query) selected = { q: app.state.query, k: selected?.k ?? app.state.query };
    $(".heat-title").textContent = `layer ${layerName}, head ${app.headName(z.head)}`;
  }

  function exportPicture(scale, background) {
    if (!z) return null;
    const m = model(background);
    return picture(m.width, m.height, scale, (ctx) => drawHeatmap(ctx, m));
  }

  return { show, frame, shown: () => z, exportPicture };
}
