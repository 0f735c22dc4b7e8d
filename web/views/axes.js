// Axes of a matrix drawn on a canvas: token labels when each row (column) has room for one, else
// position ticks; the axis titles; the selected cell's outline. Pure drawing helpers shared by the
// model view's detail heatmap, its thumbnails' grid and the difference map.
import { tokenLabel } from "../format.js";

const FONT = "11px system-ui, sans-serif";
export const LABEL_ROOM = 11; // pixels a row needs for a token label

// Ticks over [a, b): about `count` round positions.
export function ticks(a, b, count) {
  const span = Math.max(1, b - a);
  const raw = span / Math.max(1, count);
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((f) => f * mag).find((s) => s >= raw) || raw;
  const out = [];
  for (let v = Math.ceil(a / step) * step; v < b; v += step) out.push(Math.round(v));
  return out;
}

// m: { x, y, size: [w, h] (the matrix's box), rows: [q0, q1], cols: [k0, k1], rowTokens,
// colTokens, rowTitle, colTitle, textColor, matchColor, found: Set of positions to highlight }.
export function drawAxes(ctx, m) {
  const [w, h] = m.size;
  const [q0, q1] = m.rows;
  const [k0, k1] = m.cols;
  const rowPx = h / (q1 - q0);
  const colPx = w / (k1 - k0);
  ctx.save();
  ctx.font = FONT;
  ctx.fillStyle = m.textColor;
  ctx.strokeStyle = m.textColor;
  ctx.textBaseline = "middle";
  // Rows (queries), right-aligned left of the matrix.
  ctx.textAlign = "right";
  const rowAt = rowPx >= LABEL_ROOM ? range(q0, q1) : ticks(q0, q1, Math.max(2, Math.floor(h / 40)));
  for (const q of rowAt) {
    const cy = m.y + (q - q0 + 0.5) * rowPx;
    const label = rowPx >= LABEL_ROOM ? tokenLabel(m.rowTokens, q) : String(q);
    if (m.found?.has(q)) band(ctx, m.matchColor, m.x - 4 - Math.min(80, ctx.measureText(label).width) - 2, cy - 6, Math.min(80, ctx.measureText(label).width) + 4, 12, m.textColor);
    ctx.fillText(label, m.x - 4, cy, 80);
    if (rowPx < LABEL_ROOM) tick(ctx, m.x - 3, cy, m.x, cy);
  }
  // Columns (keys), rotated above the matrix.
  const colAt = colPx >= LABEL_ROOM ? range(k0, k1) : ticks(k0, k1, Math.max(2, Math.floor(w / 50)));
  for (const k of colAt) {
    const cx = m.x + (k - k0 + 0.5) * colPx;
    const label = colPx >= LABEL_ROOM ? tokenLabel(m.colTokens, k) : String(k);
    ctx.save();
    ctx.translate(cx, m.y - 4);
    ctx.rotate(-Math.PI / 2);
    ctx.textAlign = "left";
    if (m.found?.has(k)) band(ctx, m.matchColor, -2, -6, Math.min(70, ctx.measureText(label).width) + 4, 12, m.textColor);
    ctx.fillText(label, 0, 0, 70);
    ctx.restore();
    if (colPx < LABEL_ROOM) tick(ctx, cx, m.y - 3, cx, m.y);
  }
  // Axis titles.
  ctx.font = "bold 11px system-ui, sans-serif";
  ctx.textAlign = "left";
  ctx.fillText(m.colTitle, m.x, m.y - 84 > 0 ? m.y - 80 : 8);
  ctx.save();
  ctx.translate(8, m.y + h / 2);
  ctx.rotate(-Math.PI / 2);
  ctx.textAlign = "center";
  ctx.fillText(m.rowTitle, 0, 0);
  ctx.restore();
  ctx.restore();
}

function band(ctx, color, x, y, w, h, textColor) {
  ctx.fillStyle = color;
  ctx.fillRect(x, y, w, h);
  ctx.fillStyle = textColor;
}

function tick(ctx, x0, y0, x1, y1) {
  ctx.beginPath();
  ctx.moveTo(x0, y0);
  ctx.lineTo(x1, y1);
  ctx.stroke();
}

// Outline the cell (q, k) of a matrix drawn at (x, y) with size [w, h] over rows [q0, q1) × cols [k0, k1).
export function outlineCell(ctx, m, q, k, color) {
  const [w, h] = m.size;
  const [q0, q1] = m.rows;
  const [k0, k1] = m.cols;
  if (q < q0 || q >= q1 || k < k0 || k >= k1) return;
  const rowPx = h / (q1 - q0);
  const colPx = w / (k1 - k0);
  ctx.save();
  ctx.strokeStyle = color;
  ctx.lineWidth = 2;
  ctx.strokeRect(m.x + (k - k0) * colPx - 1, m.y + (q - q0) * rowPx - 1, Math.max(2, colPx) + 2, Math.max(2, rowPx) + 2);
  ctx.restore();
}

function range(a, b) {
  return Array.from({ length: b - a }, (_, i) => a + i);
}
