// Image panel of the head view, for traces whose tokens are an image's patches (KindInfo's
// patchGrid): the input image as the model saw it (stretched to the grid's shape, as the image
// processor resized it), and over it a canvas with the patch grid and the focused query's
// attention over the patches (the mean of the shown heads, from the lines the head view loaded for
// the layer), the query patch outlined, with a legend. Clicking a patch pins it as the query.
import { sizeCanvas } from "../canvas.js";
import { formatValue } from "../format.js";

const WIDTH = 260;
const HEAT = [230, 40, 20]; // the heat's colour; its opacity is the weight / the largest weight
const MAX_ALPHA = 0.7;
const GRID_COLOR = "rgba(255, 255, 255, 0.75)";
const OUTLINE_COLOR = "#00d5ff";

// The mean weight of `query` on every patch (row by row) over `heads`: Float32Array(rows × cols).
export function patchWeights(data, grid, heads, query) {
  const n = grid.rows * grid.cols;
  const out = new Float32Array(n);
  for (const h of heads) {
    const e = data.edges[h][query];
    for (let i = 0; i < e.keys.length; i++) {
      const p = e.keys[i] - grid.firstPatch;
      if (p >= 0 && p < n) out[p] += e.weights[i] / heads.length;
    }
  }
  return out;
}

// The overlay (pure: everything comes in `m`): heat per patch, grid lines, the query's outline.
export function drawOverlay(ctx, m) {
  const { width, height, grid, weights, scale } = m;
  const cw = width / grid.cols;
  const ch = height / grid.rows;
  ctx.clearRect(0, 0, width, height);
  for (let r = 0; r < grid.rows; r++) {
    for (let c = 0; c < grid.cols; c++) {
      const t = Math.min(1, weights[r * grid.cols + c] / scale);
      if (t <= 0) continue;
      ctx.fillStyle = `rgba(${HEAT.join(", ")}, ${(MAX_ALPHA * Math.sqrt(t)).toFixed(3)})`;
      ctx.fillRect(c * cw, r * ch, cw, ch);
    }
  }
  ctx.strokeStyle = GRID_COLOR;
  ctx.lineWidth = 1;
  ctx.beginPath();
  for (let c = 0; c <= grid.cols; c++) {
    const x = Math.min(width - 0.5, Math.round(c * cw) + 0.5);
    ctx.moveTo(x, 0);
    ctx.lineTo(x, height);
  }
  for (let r = 0; r <= grid.rows; r++) {
    const y = Math.min(height - 0.5, Math.round(r * ch) + 0.5);
    ctx.moveTo(0, y);
    ctx.lineTo(width, y);
  }
  ctx.stroke();
  if (m.queryPatch >= 0) {
    ctx.strokeStyle = OUTLINE_COLOR;
    ctx.lineWidth = 3;
    const r = Math.floor(m.queryPatch / grid.cols);
    const c = m.queryPatch % grid.cols;
    ctx.strokeRect(c * cw + 1.5, r * ch + 1.5, cw - 3, ch - 3);
  }
}

function drawLegend(canvas, dpr) {
  const w = 120;
  const h = 10;
  const ctx = sizeCanvas(canvas, w, h, dpr);
  for (let x = 0; x < w; x++) {
    ctx.fillStyle = `rgba(${HEAT.join(", ")}, ${(MAX_ALPHA * Math.sqrt(x / (w - 1))).toFixed(3)})`;
    ctx.fillRect(x, 0, 1, h);
  }
}

// The panel in `el`; `app` as the views get it. `show(...)` draws, `hide()` hides.
export function mountImagePanel(el, app) {
  el.innerHTML = `
    <div class="image-wrap"><img class="input-image" alt="the input image"><canvas class="overlay" title="click a patch to pin it as the query"></canvas></div>
    <div class="legend"><span>0</span><canvas class="legend-bar"></canvas><span class="legend-max"></span></div>
    <p class="image-note"></p>`;
  const $ = (sel) => el.querySelector(sel);
  const img = $(".input-image");
  const overlay = $(".overlay");
  let shown = null; // { grid }: what the overlay shows, for clicks

  overlay.addEventListener("click", (event) => {
    if (!shown) return;
    const rect = overlay.getBoundingClientRect();
    const c = Math.floor(((event.clientX - rect.left) / rect.width) * shown.grid.cols);
    const r = Math.floor(((event.clientY - rect.top) / rect.height) * shown.grid.rows);
    if (r < 0 || c < 0 || r >= shown.grid.rows || c >= shown.grid.cols) return;
    const query = shown.grid.firstPatch + r * shown.grid.cols + c;
    app.update({ query: app.state.query === query ? -1 : query });
  });

  // `image`: { url }; `k`: the KindInfo (with patchGrid); `data`: the head view's layer data;
  // `heads`: the heads shown; `query`: the focused query (-1 = none: the first token's).
  function show({ image, k, data, heads, query, layer }) {
    const grid = k.patchGrid;
    el.hidden = false;
    const q = query >= 0 ? query : 0;
    const height = Math.round((WIDTH * grid.rows) / grid.cols);
    if (img.getAttribute("src") !== image.url) img.src = image.url;
    for (const node of [img, overlay, $(".image-wrap")]) {
      node.style.width = `${WIDTH}px`;
      node.style.height = `${height}px`;
    }
    const dpr = window.devicePixelRatio || 1;
    overlay.width = Math.round(WIDTH * dpr);
    overlay.height = Math.round(height * dpr);
    const ctx = overlay.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    const weights = heads.length ? patchWeights(data, grid, heads, q) : new Float32Array(grid.rows * grid.cols);
    const scale = Math.max(1e-6, ...weights);
    const queryPatch = q >= grid.firstPatch && q < grid.firstPatch + grid.rows * grid.cols ? q - grid.firstPatch : -1;
    drawOverlay(ctx, { width: WIDTH, height, grid, weights, scale, queryPatch });
    drawLegend($(".legend-bar"), dpr);
    $(".legend-max").textContent = formatValue(scale);
    const who = heads.length === 1 ? `head ${heads[0]}` : `mean of ${heads.length} heads`;
    const exact = data.exact ? "" : `; top ${data.topK} keys per head`;
    $(".image-note").textContent = `${grid.rows}×${grid.cols} patches · attention of “${k.queryTokens[q]}”, layer ${layer}, ${who}${exact}`;
    shown = { grid };
    overlay.dataset.drawn = JSON.stringify({ query: q, layer, heads, scale }); // for tests and tools
  }

  function hide() {
    el.hidden = true;
    shown = null;
  }

  return { show, hide };
}
