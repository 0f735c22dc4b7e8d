// Model view: every layer × head as a thumbnail of its pooled map, sortable and coloured by a head
// statistic; click a cell to open that head in the head view. Below, a zoomable heatmap of one
// head: scroll to zoom, drag to pan; regions of at most tile_size × tile_size positions are
// fetched as exact tiles from the kept trace (no model re-run), larger ones are drawn from the
// pooled map. The statistics (and which end is notable), the thumbnail and tile sizes come from
// the service's GetServerInfo.
import { heat } from "../colors.js";
import { getViews, views } from "../data.js";
import { generations } from "../state.js";

const TILE_DELAY_MS = 150; // a zoom or pan that rests this long gets its exact tile

// ---- pure drawing ------------------------------------------------------------------------------
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

export function drawGrid(ctx, m) {
  const { layers, heads, cell, gap, rows, cols, pooled, order, stat, dark } = m;
  ctx.clearRect(0, 0, ctx.canvas.width, ctx.canvas.height);
  const tile = document.createElement("canvas");
  tile.width = cols;
  tile.height = rows;
  const tctx = tile.getContext("2d");
  const image = tctx.createImageData(cols, rows);
  ctx.imageSmoothingEnabled = false;
  ctx.font = "11px system-ui, sans-serif";
  ctx.textBaseline = "top";
  for (let l = 0; l < layers; l++) {
    for (let col = 0; col < heads; col++) {
      const h = order[l][col];
      const offset = (l * heads + h) * rows * cols;
      paintMatrix(image, pooled.subarray(offset, offset + rows * cols), rows, cols, dark);
      tctx.putImageData(image, 0, 0);
      const x = m.left + col * (cell + gap);
      const y = m.top + l * (cell + gap + (stat ? 12 : 0));
      ctx.drawImage(tile, x, y, cell, cell);
      if (stat) {
        const v = m.stats[stat][l * heads + h];
        ctx.fillStyle = `rgba(214, 39, 40, ${m.notability(v).toFixed(3)})`;
        ctx.fillRect(x, y + cell + 1, cell, 10);
        ctx.fillStyle = m.textColor;
        ctx.fillText(`H${h} ${v.toFixed(2)}`, x + 2, y + cell + 1);
      }
    }
    ctx.fillStyle = m.textColor;
    ctx.fillText(`L${l}`, 2, m.top + l * (cell + gap + (stat ? 12 : 0)) + cell / 2 - 6);
  }
}

// The zoomable heatmap (pure): m = { size (CSS pixels a side), region: [q0, q1, k0, k1], exact,
// tile (the region's exact values), base (pooled, rows × cols), rows, cols, lq, lk, dark }.
export function drawHeatmap(ctx, m) {
  const { size, region, exact } = m;
  const [q0, q1, k0, k1] = region;
  const values = new Float32Array(size * size);
  for (let py = 0; py < size; py++) {
    const q = q0 + Math.floor(((py + 0.5) * (q1 - q0)) / size);
    for (let px = 0; px < size; px++) {
      const k = k0 + Math.floor(((px + 0.5) * (k1 - k0)) / size);
      if (exact) values[py * size + px] = m.tile[(q - q0) * (k1 - k0) + (k - k0)];
      else {
        const r = Math.min(m.rows - 1, Math.floor((q * m.rows) / m.lq));
        const c = Math.min(m.cols - 1, Math.floor((k * m.cols) / m.lk));
        values[py * size + px] = m.base[r * m.cols + c];
      }
    }
  }
  const image = paintMatrix(new ImageData(size, size), values, size, size, m.dark);
  const pixels = document.createElement("canvas");
  pixels.width = size;
  pixels.height = size;
  pixels.getContext("2d").putImageData(image, 0, 0);
  ctx.imageSmoothingEnabled = false;
  ctx.drawImage(pixels, 0, 0, size, size);
}

// ---- mounting ----------------------------------------------------------------------------------
export function mount(root, app) {
  const stats = app.server.headStats; // [{ name, description, notable: "high" | "low" }]
  const notableLow = new Set(stats.filter((s) => s.notable === "low").map((s) => s.name));
  const esc = (t) => t.replace(/[<>&"]/g, (c) => ({ "<": "&lt;", ">": "&gt;", "&": "&amp;", '"': "&quot;" })[c]);
  root.innerHTML = `
    <div class="controls">
      <label>Sort and colour by <select class="sort"><option value="">— (head order)</option>
        ${stats.map((s) => `<option value="${esc(s.name)}" title="${esc(s.description)}">${esc(s.name)}</option>`).join("")}</select></label>
      <label class="kind-label" hidden>Attention <select class="kind"></select></label>
      <span class="hint">click a head to open it in the head view; shift-click to zoom it below</span>
    </div>
    <canvas class="grid"></canvas>
    <div class="controls">
      <strong class="heat-title"></strong>
      <button class="reset" type="button">reset zoom</button>
      <span class="region"></span>
    </div>
    <canvas class="heatmap" title="scroll to zoom, drag to pan"></canvas>`;
  const $ = (sel) => root.querySelector(sel);
  const grid = $(".grid");
  const heatmap = $(".heatmap");
  let current = null; // { key, k: KindInfo, rows, cols, pooled, stats }
  let layoutInfo = null;
  let zoom = null; // { key, layer, head, base, rows, cols, region: [q0, q1, k0, k1], tile, tileRegion }
  let tileTimer = null;
  let cancelTile = () => {}; // ends the wait of a tile whose region changed before its fetch
  const tileLoads = generations();
  window.attnscopeTimings = { ...(window.attnscopeTimings || {}), tileFetches: 0 };

  $(".sort").addEventListener("change", (e) => app.update({ sort: e.target.value }));
  $(".kind").addEventListener("change", (e) => app.update({ kind: e.target.value }));
  $(".reset").addEventListener("click", () => {
    if (zoom) zoom.region = [0, current.k.queryLen, 0, current.k.keyLen];
    app.invalidate(heatFrame);
  });

  function order(k, values, stat) {
    return [...Array(k.numLayers).keys()].map((l) => {
      const idx = [...Array(k.numHeads).keys()];
      if (!stat || !values) return idx;
      const sign = notableLow.has(stat) ? 1 : -1; // the notable end first
      return idx.sort((a, b) => sign * (values[l * k.numHeads + a] - values[l * k.numHeads + b]));
    });
  }

  function gridFrame() {
    if (!current || root.hidden) return;
    const t0 = performance.now();
    const { k } = current;
    const stat = current.stats[app.state.sort] ? app.state.sort : "";
    const width = Math.max(300, root.clientWidth - 8);
    const gap = 4;
    const cell = Math.max(24, Math.min(96, Math.floor((width - 30) / k.numHeads) - gap));
    const rowH = cell + gap + (stat ? 12 : 0);
    const height = 8 + k.numLayers * rowH;
    const dpr = window.devicePixelRatio || 1;
    grid.width = Math.round(width * dpr);
    grid.height = Math.round(height * dpr);
    grid.style.width = `${width}px`;
    grid.style.height = `${height}px`;
    const ctx = grid.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    const values = stat ? current.stats[stat] : null;
    const lo = values ? Math.min(...values) : 0;
    const hi = values ? Math.max(...values) : 1;
    const ord = order(k, values, stat);
    layoutInfo = { left: 28, top: 4, cell, gap, rowH, order: ord };
    grid.dataset.layout = JSON.stringify(layoutInfo); // geometry for tests and tools
    drawGrid(ctx, {
      layers: k.numLayers, heads: k.numHeads, cell, gap, rows: current.rows, cols: current.cols,
      pooled: current.pooled,
      order: ord, stat, stats: current.stats, left: 28, top: 4, dark: app.state.theme === "dark",
      textColor: getComputedStyle(document.body).getPropertyValue("--fg").trim() || "#222",
      notability: (v) => {
        const t = hi > lo ? (v - lo) / (hi - lo) : 0;
        return notableLow.has(stat) ? 1 - t : t;
      },
    });
    const t = window.attnscopeTimings || {};
    // modelDrawMs: drawing alone; modelReadyMs: from navigation start to the first drawn grid.
    window.attnscopeTimings = { ...t, modelDrawMs: performance.now() - t0, modelReadyMs: t.modelReadyMs ?? performance.now() };
  }

  function cellAt(event) {
    if (!layoutInfo || !current) return null;
    const rect = grid.getBoundingClientRect();
    const x = event.clientX - rect.left - layoutInfo.left;
    const y = event.clientY - rect.top - layoutInfo.top;
    const col = Math.floor(x / (layoutInfo.cell + layoutInfo.gap));
    const l = Math.floor(y / layoutInfo.rowH);
    if (x < 0 || y < 0 || col >= current.k.numHeads || l >= current.k.numLayers) return null;
    return { layer: l, head: layoutInfo.order[l][col] };
  }

  grid.addEventListener("click", (event) => {
    const hit = cellAt(event);
    if (!hit) return;
    if (event.shiftKey) app.update({ layer: hit.layer, head: hit.head });
    else app.update({ view: "head", layer: hit.layer, head: hit.head });
  });

  // ---- zoomable heatmap ----------------------------------------------------------------------
  function heatFrame() {
    if (!zoom || root.hidden) return;
    const size = heatmap.clientWidth || app.server.viewer.tileSize;
    const dpr = window.devicePixelRatio || 1;
    heatmap.style.width = `${size}px`;
    heatmap.style.height = `${size}px`;
    heatmap.width = Math.round(size * dpr);
    heatmap.height = Math.round(size * dpr);
    const ctx = heatmap.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    const exact = Boolean(zoom.tile) && zoom.tileRegion.join() === zoom.region.join();
    drawHeatmap(ctx, { ...zoom, size, exact, lq: current.k.queryLen, lk: current.k.keyLen, dark: app.state.theme === "dark" });
    const [q0, q1, k0, k1] = zoom.region;
    $(".region").textContent = `queries ${q0}–${q1 - 1}, keys ${k0}–${k1 - 1} ${exact ? "(exact tile)" : "(pooled)"}`;
    loadTileSoon();
  }

  // The load step of the heatmap: once a zoomed region small enough for an exact tile rests,
  // fetch it; a tile that arrives after a newer request started is dropped.
  function loadTileSoon() {
    cancelTile();
    const [q0, q1, k0, k1] = zoom.region;
    const limit = app.server.viewer.tileSize;
    const pooledIsExact = zoom.rows === current.k.queryLen && zoom.cols === current.k.keyLen;
    if (pooledIsExact || q1 - q0 > limit || k1 - k0 > limit) return;
    if (zoom.tileRegion && zoom.tileRegion.join() === zoom.region.join()) return;
    const target = zoom;
    const region = [...zoom.region];
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
          const { tensors } = await getViews(target.traceId, [views.tile("zoom", target.layer, target.head, [q0, q1], [k0, k1], target.kind)]);
          if (!tileLoads.isCurrent(g) || zoom !== target) return;
          window.attnscopeTimings.tileFetches += 1;
          target.tile = tensors.zoom.data;
          target.tileRegion = region;
          app.invalidate(heatFrame);
        } catch (err) {
          if (tileLoads.isCurrent(g)) app.fail(err);
        } finally {
          resolve();
        }
      }, TILE_DELAY_MS);
    }));
  }

  heatmap.addEventListener("wheel", (event) => {
    if (!zoom) return;
    event.preventDefault();
    const rect = heatmap.getBoundingClientRect();
    const fx = (event.clientX - rect.left) / rect.width;
    const fy = (event.clientY - rect.top) / rect.height;
    const factor = event.deltaY < 0 ? 0.5 : 2;
    const [q0, q1, k0, k1] = zoom.region;
    const zoomAxis = (a, b, f, n) => {
      const span = Math.max(1, Math.min(n, Math.round((b - a) * factor)));
      const center = a + f * (b - a);
      const start = Math.max(0, Math.min(n - span, Math.round(center - f * span)));
      return [start, start + span];
    };
    const [nq0, nq1] = zoomAxis(q0, q1, fy, current.k.queryLen);
    const [nk0, nk1] = zoomAxis(k0, k1, fx, current.k.keyLen);
    zoom.region = [nq0, nq1, nk0, nk1];
    app.invalidate(heatFrame);
  }, { passive: false });

  let drag = null;
  heatmap.addEventListener("mousedown", (event) => {
    drag = { x: event.clientX, y: event.clientY, region: [...(zoom?.region || [])] };
  });
  window.addEventListener("mouseup", () => { drag = null; });
  heatmap.addEventListener("mousemove", (event) => {
    if (!drag || !zoom) return;
    const rect = heatmap.getBoundingClientRect();
    const [q0, q1, k0, k1] = drag.region;
    const dq = Math.round(((drag.y - event.clientY) / rect.height) * (q1 - q0));
    const dk = Math.round(((drag.x - event.clientX) / rect.width) * (k1 - k0));
    const sq = Math.max(-q0, Math.min(current.k.queryLen - q1, dq));
    const sk = Math.max(-k0, Math.min(current.k.keyLen - k1, dk));
    zoom.region = [q0 + sq, q1 + sq, k0 + sk, k1 + sk];
    app.invalidate(heatFrame);
  });

  // Load the thumbnails, statistics and the heatmap's pooled map the state asks for (one call,
  // only what is not loaded yet); then, if no newer render started, draw.
  async function render(info, fresh) {
    const s = app.state;
    const viewer = app.server.viewer;
    const k = info.kind(s.kind);
    const lq = k.queryLen;
    const lk = k.keyLen;
    const layer = Math.min(Math.max(0, s.layer), k.numLayers - 1);
    const head = s.head >= 0 ? Math.min(s.head, k.numHeads - 1) : 0;
    const key = `${info.traceId}/${k.kind}`;
    const zoomKey = `${key}/${layer}/${head}`;
    const needGrid = current?.key !== key;
    const needZoom = zoom?.key !== zoomKey;
    const requested = [];
    if (needGrid) {
      requested.push(views.pooled("thumbs", Math.min(viewer.thumbnailSize, Math.max(lq, lk)), k.kind));
      requested.push(views.headStats("stats", k.kind));
    }
    if (needZoom) requested.push(views.pooled("heatmap", Math.min(viewer.tileSize, Math.max(lq, lk)), k.kind, [layer], [head]));
    let tensors = {};
    if (requested.length) {
      ({ tensors } = await app.busy(getViews(info.traceId, requested)));
      if (!fresh()) return;
    }
    if (needGrid) {
      const thumbs = tensors.thumbs;
      current = { key, k, rows: thumbs.shape[2], cols: thumbs.shape[3], pooled: thumbs.data,
        stats: Object.fromEntries(stats.map((st) => [st.name, tensors[`stats/${st.name}`].data])) };
    }
    if (needZoom) {
      const base = tensors.heatmap;
      zoom = { key: zoomKey, traceId: info.traceId, kind: k.kind, layer, head, base: base.data, rows: base.shape[2], cols: base.shape[3],
        region: [0, lq, 0, lk], tile: null, tileRegion: null };
      $(".heat-title").textContent = `layer ${layer}, head ${head}`;
    }
    $(".kind-label").hidden = info.kinds.length < 2;
    $(".kind").replaceChildren(...info.kindNames.map((n) => new Option(n, n, false, n === k.kind)));
    $(".sort").value = s.sort;
    gridFrame();
    heatFrame();
  }

  return {
    render,
    exportPng: () => grid,
    exportJson: () => current && { kind: current.k.kind, rows: current.rows, cols: current.cols, layers: current.k.numLayers,
      heads: current.k.numHeads, pooled: [...current.pooled],
      stats: Object.fromEntries(Object.entries(current.stats).map(([n, v]) => [n, [...v]])) },
  };
}
