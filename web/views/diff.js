// Comparison: the difference (first − second) of two inputs' pooled maps, every layer × head of
// the default kind, on a common grid of position blocks, with Layers/Heads axes, a legend of the
// range and the value under the pointer; blue where the first input attends more, orange where
// the second does. Inputs of different lengths are pooled to the same number of blocks, and the
// note under the title says so (a block then covers different positions in each input).
import { getViews, views } from "../data.js";
import { formatValue, themeColor } from "../format.js";
import { picture, sizeCanvas } from "../canvas.js";
import { drawLegend, LEGEND_HEIGHT } from "../legend.js";

const SIZE = 32; // blocks per axis (fewer for shorter inputs)
const CELL = 48; // CSS pixels a head
const GAP = 4;
const LEFT = 46;
const TOP = 24;

// A strong diverging colour for d in [-1, 1] (opaque, blended with the background).
export function diffColor(d, bg) {
  const t = Math.sqrt(Math.min(1, Math.abs(d)));
  const to = d >= 0 ? [31, 119, 180] : [230, 110, 0];
  return `rgb(${to.map((c, i) => Math.round(bg[i] + (c - bg[i]) * t)).join(",")})`;
}

function rgb(css) {
  const probe = document.createElement("canvas").getContext("2d");
  probe.fillStyle = css;
  const hex = probe.fillStyle;
  return hex.startsWith("#") ? [1, 3, 5].map((i) => Number.parseInt(hex.slice(i, i + 2), 16)) : [255, 255, 255];
}

// m: { a, b (Float32Array [layers, heads, rows, cols]), layers, heads, rows, cols, scale, bg, textColor }
export function draw(ctx, m) {
  const { a, b, layers, heads, rows, cols, scale } = m;
  ctx.fillStyle = `rgb(${m.bg.join(",")})`;
  ctx.fillRect(0, 0, m.width, m.height);
  const rowPx = CELL / rows;
  const colPx = CELL / cols;
  for (let l = 0; l < layers; l++) {
    for (let h = 0; h < heads; h++) {
      const base = (l * heads + h) * rows * cols;
      const x0 = LEFT + h * (CELL + GAP);
      const y0 = TOP + l * (CELL + GAP);
      for (let r = 0; r < rows; r++) {
        for (let c = 0; c < cols; c++) {
          ctx.fillStyle = diffColor((a[base + r * cols + c] - b[base + r * cols + c]) / scale, m.bg);
          ctx.fillRect(x0 + c * colPx, y0 + r * rowPx, Math.ceil(colPx), Math.ceil(rowPx));
        }
      }
      ctx.strokeStyle = m.lineColor;
      ctx.strokeRect(x0 - 0.5, y0 - 0.5, CELL + 1, CELL + 1);
    }
  }
  ctx.fillStyle = m.textColor;
  ctx.font = "11px system-ui, sans-serif";
  ctx.textBaseline = "middle";
  ctx.textAlign = "right";
  for (let l = 0; l < layers; l++) ctx.fillText(m.layerName(l), LEFT - 5, TOP + l * (CELL + GAP) + CELL / 2);
  ctx.textAlign = "center";
  for (let h = 0; h < heads; h++) ctx.fillText(String(h), LEFT + h * (CELL + GAP) + CELL / 2, TOP - 8);
  ctx.font = "bold 12px system-ui, sans-serif";
  ctx.save();
  ctx.translate(10, TOP + (layers * (CELL + GAP)) / 2);
  ctx.rotate(-Math.PI / 2);
  ctx.fillText("Layers", 0, 0);
  ctx.restore();
  ctx.textAlign = "left";
  ctx.fillText("Heads", LEFT, 6);
  drawLegend(ctx, legendOf(m), LEFT, TOP + layers * (CELL + GAP), m.textColor);
}

function legendOf(m) {
  return { kind: "scale", label: "first − second", lo: -m.scale, hi: m.scale, color: (t) => diffColor(2 * t - 1, m.bg) };
}

function sizeOf(m) {
  return { width: Math.max(LEFT + m.heads * (CELL + GAP), LEFT + 420), height: TOP + m.layers * (CELL + GAP) + LEGEND_HEIGHT };
}

// ---- mounting ----------------------------------------------------------------------------------
export function mount(root, app) {
  root.innerHTML = `<p class="diff-note"></p><canvas class="difference-map"></canvas><div class="tooltip" hidden></div>`;
  const canvas = root.querySelector("canvas");
  const tip = root.querySelector(".tooltip");
  let current = null; // { key, a, b, layers, heads, rows, cols, scale }

  function model(background) {
    const bg = rgb(background || themeColor("--bg", "#fff"));
    return { ...current, ...sizeOf(current), bg, textColor: themeColor("--fg", "#222"), lineColor: themeColor("--line", "#ccc"), layerName: (l) => app.layerName(l) };
  }

  function frame() {
    if (!current) return;
    const m = model();
    draw(sizeCanvas(canvas, m.width, m.height), m);
  }

  canvas.addEventListener("mousemove", (event) => {
    if (!current) return;
    const rect = canvas.getBoundingClientRect();
    const x = event.clientX - rect.left - LEFT;
    const y = event.clientY - rect.top - TOP;
    const h = Math.floor(x / (CELL + GAP));
    const l = Math.floor(y / (CELL + GAP));
    const fx = (x - h * (CELL + GAP)) / CELL;
    const fy = (y - l * (CELL + GAP)) / CELL;
    if (x < 0 || y < 0 || h >= current.heads || l >= current.layers || fx >= 1 || fy >= 1) {
      tip.hidden = true;
      return;
    }
    const r = Math.floor(fy * current.rows);
    const c = Math.floor(fx * current.cols);
    const i = (l * current.heads + h) * current.rows * current.cols + r * current.cols + c;
    tip.textContent = `layer ${app.layerName(l)}, head ${h}, block ${r},${c}: ${formatValue(current.a[i])} − ${formatValue(current.b[i])} = ${formatValue(current.a[i] - current.b[i])}`;
    tip.style.left = `${event.clientX + 12}px`;
    tip.style.top = `${event.clientY + 12}px`;
    tip.hidden = false;
  });
  canvas.addEventListener("mouseleave", () => { tip.hidden = true; });

  // Load both pooled maps (unless loaded for these two traces), then, if no newer render started, draw.
  async function render(first, second, fresh) {
    const ka = first.kinds[0];
    const kb = second.kinds[0];
    const size = Math.min(SIZE, ka.queryLen, ka.keyLen, kb.queryLen, kb.keyLen);
    const key = `${first.traceId}/${second.traceId}/${size}${first.variant || ""}`;
    if (current?.key !== key) {
      const ask = (info) => getViews(info.traceId, [views.pooled("difference", size, info.kinds[0].kind)]);
      const [ra, rb] = await app.busy(Promise.all([ask(first), ask(second)]));
      if (!fresh()) return;
      const pa = ra.tensors.difference;
      const pb = rb.tensors.difference;
      if (pa.shape.join() !== pb.shape.join()) throw new Error(`the two inputs' pooled maps differ in shape: ${pa.shape} and ${pb.shape}`);
      const [layers, heads, rows, cols] = pa.shape;
      let scale = 1e-9;
      for (let i = 0; i < pa.data.length; i++) scale = Math.max(scale, Math.abs(pa.data[i] - pb.data[i]));
      current = { key, a: pa.data, b: pb.data, layers, heads, rows, cols, scale };
    }
    const same = ka.queryLen === kb.queryLen && ka.keyLen === kb.keyLen;
    const blocks = current.rows === ka.queryLen && same ? "every position" : `${current.rows} × ${current.cols} blocks of positions (each a block's mean)`;
    root.querySelector(".diff-note").textContent = same
      ? `Both inputs have ${ka.queryLen} tokens; each head compared on ${blocks}.`
      : `The inputs differ in length (${ka.queryLen} and ${kb.queryLen} tokens): both are pooled to ${current.rows} × ${current.cols} blocks, so a cell compares relative positions, not the same tokens.`;
    frame();
  }

  return {
    render,
    exportPicture: (scale, background) => {
      if (!current) return null;
      const m = model(background);
      return picture(m.width, m.height, scale, (ctx) => draw(ctx, m));
    },
  };
}
