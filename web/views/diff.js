// Comparison: the difference (first − second) of two inputs' pooled maps, every layer × head of
// the default kind, on a common grid size; blue where the first input attends more, orange where
// the second does.
import { signedColor } from "../colors.js";
import { getViews, views } from "../data.js";

const SIZE = 32; // blocks per axis (fewer for shorter inputs)
const CELL = 40; // CSS pixels a head
const GAP = 4;

// ---- pure drawing ------------------------------------------------------------------------------
// m: { a, b (Float32Array [layers, heads, rows, cols]), layers, heads, rows, cols }
export function draw(ctx, m) {
  const { a, b, layers, heads, rows, cols } = m;
  ctx.clearRect(0, 0, heads * (CELL + GAP), layers * (CELL + GAP));
  let scale = 1e-9;
  for (let i = 0; i < a.length; i++) scale = Math.max(scale, Math.abs(a[i] - b[i]));
  const rowPx = CELL / rows;
  const colPx = CELL / cols;
  for (let l = 0; l < layers; l++) {
    for (let h = 0; h < heads; h++) {
      const base = (l * heads + h) * rows * cols;
      for (let r = 0; r < rows; r++) {
        for (let c = 0; c < cols; c++) {
          ctx.fillStyle = signedColor(a[base + r * cols + c] - b[base + r * cols + c], scale);
          ctx.fillRect(h * (CELL + GAP) + c * colPx, l * (CELL + GAP) + r * rowPx, Math.ceil(colPx), Math.ceil(rowPx));
        }
      }
    }
  }
}

// ---- mounting ----------------------------------------------------------------------------------
export function mount(root, app) {
  root.innerHTML = `<canvas class="difference-map"></canvas>`;
  const canvas = root.querySelector("canvas");
  let current = null; // { key, a, b, layers, heads, rows, cols }

  function frame() {
    if (!current) return;
    const width = current.heads * (CELL + GAP);
    const height = current.layers * (CELL + GAP);
    const dpr = window.devicePixelRatio || 1;
    canvas.style.width = `${width}px`;
    canvas.style.height = `${height}px`;
    canvas.width = Math.round(width * dpr);
    canvas.height = Math.round(height * dpr);
    const ctx = canvas.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    draw(ctx, current);
  }

  // Load both pooled maps (unless loaded for these two traces), then, if no newer render started, draw.
  async function render(first, second, fresh) {
    const ka = first.kinds[0];
    const kb = second.kinds[0];
    const size = Math.min(SIZE, ka.queryLen, ka.keyLen, kb.queryLen, kb.keyLen);
    const key = `${first.traceId}/${second.traceId}/${size}`;
    if (current?.key !== key) {
      const ask = (info) => getViews(info.traceId, [views.pooled("difference", size, info.kinds[0].kind)]);
      const [ra, rb] = await app.busy(Promise.all([ask(first), ask(second)]));
      if (!fresh()) return;
      const pa = ra.tensors.difference;
      const pb = rb.tensors.difference;
      if (pa.shape.join() !== pb.shape.join()) throw new Error(`the two inputs' pooled maps differ in shape: ${pa.shape} and ${pb.shape}`);
      const [layers, heads, rows, cols] = pa.shape;
      current = { key, a: pa.data, b: pb.data, layers, heads, rows, cols };
    }
    frame();
  }

  return { render, exportPng: () => canvas };
}
