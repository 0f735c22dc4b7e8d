// Model view: every layer × head as a thumbnail of its pooled map, sortable and coloured by a head
// statistic; click a cell to open that head in the head view. Below, a zoomable heatmap of one
// head: scroll to zoom, drag to pan; regions of at most 512 × 512 are fetched as exact tiles from
// the kept trace (no model re-run), larger ones are drawn from the pooled map.
import { heat } from "../colors.js";
import { getViews, views } from "../data.js";

export const THUMB = 64;
export const HEATMAP = 512;
const STATS = ["entropy", "previous_token", "self", "first_token", "mean_distance"];
const LOW_IS_NOTABLE = new Set(["entropy"]);

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

// ---- mounting ----------------------------------------------------------------------------------
export function mount(root, app) {
  root.innerHTML = `
    <div class="controls">
      <label>Sort and colour by <select class="sort"><option value="">— (head order)</option>
        ${STATS.map((s) => `<option value="${s}">${s}</option>`).join("")}</select></label>
      <label class="kind-label" hidden>Attention <select class="kind"></select></label>
      <span class="hint">click a head to open it in the head view; shift-click to zoom it below</span>
    </div>
    <canvas class="grid"></canvas>
    <div class="controls">
      <strong class="heat-title"></strong>
      <button class="reset" type="button">reset zoom</button>
      <span class="region"></span>
    </div>
    <canvas class="heatmap" width="${HEATMAP}" height="${HEATMAP}" title="scroll to zoom, drag to pan"></canvas>`;
  const $ = (sel) => root.querySelector(sel);
  const grid = $(".grid");
  const heatmap = $(".heatmap");
  let current = null; // { key, info, kind, size, pooled, stats, lq, lk }
  let layoutInfo = null;
  let zoom = null; // { key, base, baseSize, region: [q0, q1, k0, k1], tile, tileRegion }
  let fetchTimer = null;
  window.attnscopeTimings = { ...(window.attnscopeTimings || {}), tileFetches: 0 };

  $(".sort").addEventListener("change", (e) => app.update({ sort: e.target.value }));
  $(".kind").addEventListener("change", (e) => app.update({ kind: e.target.value }));
  $(".reset").addEventListener("click", () => {
    if (zoom) zoom.region = [0, current.lq, 0, current.lk];
    drawHeatmap();
  });

  function order(info, stats, stat) {
    return [...Array(info.numLayers).keys()].map((l) => {
      const idx = [...Array(info.numHeads).keys()];
      if (!stat) return idx;
      const sign = LOW_IS_NOTABLE.has(stat) ? 1 : -1;
      return idx.sort((a, b) => sign * (stats[stat][l * info.numHeads + a] - stats[stat][l * info.numHeads + b]));
    });
  }

  function drawAll() {
    if (!current) return;
    const t0 = performance.now();
    const { info } = current;
    const stat = app.state.sort;
    const width = Math.max(300, root.clientWidth - 8);
    const gap = 4;
    const cell = Math.max(24, Math.min(96, Math.floor((width - 30) / info.numHeads) - gap));
    const rowH = cell + gap + (stat ? 12 : 0);
    const height = 8 + info.numLayers * rowH;
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
    const ord = order(info, current.stats, stat);
    layoutInfo = { left: 28, top: 4, cell, gap, rowH, order: ord };
    grid.dataset.layout = JSON.stringify(layoutInfo); // geometry for tests and tools
    drawGrid(ctx, {
      layers: info.numLayers, heads: info.numHeads, cell, gap, rows: current.rows, cols: current.cols,
      pooled: current.pooled,
      order: ord, stat, stats: current.stats, left: 28, top: 4, dark: app.state.theme === "dark",
      textColor: getComputedStyle(document.body).getPropertyValue("--fg").trim() || "#222",
      notability: (v) => {
        const t = hi > lo ? (v - lo) / (hi - lo) : 0;
        return LOW_IS_NOTABLE.has(stat) ? 1 - t : t;
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
    if (x < 0 || y < 0 || col >= current.info.numHeads || l >= current.info.numLayers) return null;
    return { layer: l, head: layoutInfo.order[l][col] };
  }

  grid.addEventListener("click", (event) => {
    const hit = cellAt(event);
    if (!hit) return;
    if (event.shiftKey) app.update({ layer: hit.layer, head: hit.head });
    else app.update({ view: "head", layer: hit.layer, head: hit.head });
  });

  // ---- zoomable heatmap ----------------------------------------------------------------------
  async function loadHeatmap(layer, head) {
    const key = `${current.key}/${layer}/${head}`;
    if (zoom?.key === key) return;
    const size = Math.min(HEATMAP, Math.max(current.lq, current.lk));
    const { tensors } = await app.busy(getViews(current.info.traceId, [views.pooled(size, current.kind, [layer], [head])]));
    const base = tensors.pooled;
    zoom = { key, layer, head, base: base.data, rows: base.shape[2], cols: base.shape[3],
      region: [0, current.lq, 0, current.lk], tile: null, tileRegion: null };
    $(".heat-title").textContent = `layer ${layer}, head ${head}`;
  }

  function drawHeatmap() {
    if (!zoom) return;
    const [q0, q1, k0, k1] = zoom.region;
    const ctx = heatmap.getContext("2d");
    const image = ctx.createImageData(HEATMAP, HEATMAP);
    const dark = app.state.theme === "dark";
    const exact = zoom.tile && zoom.tileRegion.join() === zoom.region.join();
    const values = new Float32Array(HEATMAP * HEATMAP);
    for (let py = 0; py < HEATMAP; py++) {
      const q = q0 + Math.floor(((py + 0.5) * (q1 - q0)) / HEATMAP);
      for (let px = 0; px < HEATMAP; px++) {
        const k = k0 + Math.floor(((px + 0.5) * (k1 - k0)) / HEATMAP);
        if (exact) values[py * HEATMAP + px] = zoom.tile[(q - q0) * (k1 - k0) + (k - k0)];
        else {
          const r = Math.min(zoom.rows - 1, Math.floor((q * zoom.rows) / current.lq));
          const c = Math.min(zoom.cols - 1, Math.floor((k * zoom.cols) / current.lk));
          values[py * HEATMAP + px] = zoom.base[r * zoom.cols + c];
        }
      }
    }
    ctx.putImageData(paintMatrix(image, values, HEATMAP, HEATMAP, dark), 0, 0);
    $(".region").textContent = `queries ${q0}–${q1 - 1}, keys ${k0}–${k1 - 1} ${exact ? "(exact tile)" : "(pooled)"}`;
    scheduleTile();
  }

  function scheduleTile() {
    clearTimeout(fetchTimer);
    const [q0, q1, k0, k1] = zoom.region;
    const pooledIsExact = zoom.rows === current.lq && zoom.cols === current.lk;
    if (pooledIsExact || q1 - q0 > HEATMAP || k1 - k0 > HEATMAP) return;
    if (zoom.tileRegion && zoom.tileRegion.join() === zoom.region.join()) return;
    fetchTimer = setTimeout(async () => {
      const region = [...zoom.region];
      const { tensors } = await getViews(current.info.traceId, [views.tile(zoom.layer, zoom.head, [region[0], region[1]], [region[2], region[3]], current.kind)]);
      window.attnscopeTimings.tileFetches += 1;
      zoom.tile = tensors["tile/0"].data;
      zoom.tileRegion = region;
      drawHeatmap();
    }, 150);
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
    const [nq0, nq1] = zoomAxis(q0, q1, fy, current.lq);
    const [nk0, nk1] = zoomAxis(k0, k1, fx, current.lk);
    zoom.region = [nq0, nq1, nk0, nk1];
    drawHeatmap();
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
    const sq = Math.max(-q0, Math.min(current.lq - q1, dq));
    const sk = Math.max(-k0, Math.min(current.lk - k1, dk));
    zoom.region = [q0 + sq, q1 + sq, k0 + sk, k1 + sk];
    drawHeatmap();
  });

  async function render(info) {
    const s = app.state;
    const kind = info.kinds.includes(s.kind) ? s.kind : info.kinds[0];
    $(".kind-label").hidden = info.kinds.length < 2;
    $(".kind").replaceChildren(...info.kinds.map((k) => new Option(k, k, false, k === kind)));
    $(".sort").value = s.sort;
    const key = `${info.traceId}/${kind}`;
    if (!current || current.key !== key) {
      const decoderSide = kind !== "encoder" && info.targetTokens.length > 0;
      const lq = decoderSide ? info.targetTokens.length : info.tokens.length;
      const lk = kind === "cross" ? info.tokens.length : lq;
      const size = Math.min(THUMB, Math.max(lq, lk));
      const { tensors } = await app.busy(getViews(info.traceId, [views.pooled(size, kind), views.headStats(kind)]));
      const stats = Object.fromEntries(STATS.map((n) => [n, tensors[`head_stats/${n}`].data]));
      const pooled = tensors.pooled;
      current = { key, info, kind, rows: pooled.shape[2], cols: pooled.shape[3], pooled: pooled.data, stats, lq, lk };
      zoom = null;
    }
    drawAll();
    const layer = Math.min(Math.max(0, s.layer), info.numLayers - 1);
    const head = s.head >= 0 ? Math.min(s.head, info.numHeads - 1) : 0;
    await loadHeatmap(layer, head);
    drawHeatmap();
  }

  return {
    render,
    exportPng: () => grid,
    exportJson: () => current && { kind: current.kind, rows: current.rows, cols: current.cols, layers: current.info.numLayers,
      heads: current.info.numHeads, pooled: [...current.pooled],
      stats: Object.fromEntries(Object.entries(current.stats).map(([k, v]) => [k, [...v]])) },
  };
}
