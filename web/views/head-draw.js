// The head view's picture (pure: everything it needs comes in `m`): two columns of tokens, the
// lines between them (opacity = weight, one colour per head), the weight boxes of a focused
// query, search matches and the pinned query; generated tokens (positions from m.promptLen on, when
// set) in the accent colour. The columns sit close (bertviz's compact layout).
import { headColor } from "../colors.js";
import { inFilter, weightOf } from "./head-data.js";

export const ROW = 18;
const FONT = "13px system-ui, sans-serif";
const BOLD = "bold 13px system-ui, sans-serif";

// The columns: query text [0, leftX), lines [leftX, rightX), weight boxes, key text; `width` is
// the whole picture's.
export function layout(available, numHeads) {
  const textWidth = Math.round(Math.min(170, Math.max(70, available * 0.16)));
  const span = Math.round(Math.min(320, Math.max(120, available - 2 * textWidth - 80)));
  const boxes = Math.min(120, numHeads * 8) + 6;
  const leftX = textWidth;
  const rightX = leftX + span;
  return { row: ROW, textWidth, leftX, rightX, boxesX: rightX + 4, keyX: rightX + boxes, width: rightX + boxes + textWidth, box: Math.max(3, Math.min(8, 120 / Math.max(1, numHeads))) };
}

export function draw(ctx, m) {
  const { lay, first, last, scroll, height } = m;
  if (m.background) {
    ctx.fillStyle = m.background;
    ctx.fillRect(0, 0, lay.width, height);
  } else ctx.clearRect(0, 0, lay.width, height);
  ctx.textBaseline = "middle";
  const y = (i) => i * lay.row + lay.row / 2 - scroll;
  const focusQuery = m.hover?.side === "left" ? m.hover.index : m.pinned >= 0 ? m.pinned : -1;
  const focusKey = m.hover?.side === "right" ? m.hover.index : -1;
  // Search matches: a band behind the token on both sides.
  ctx.fillStyle = m.matchColor;
  for (const i of m.found) {
    if (i >= first && i < last) ctx.fillRect(0, y(i) - lay.row / 2 + 1, lay.leftX - 2, lay.row - 2);
    if (i >= m.firstKey && i < m.lastKey) ctx.fillRect(lay.keyX - 2, y(i) - lay.row / 2 + 1, lay.textWidth, lay.row - 2);
  }
  // Lines, head by head.
  ctx.lineWidth = 2;
  for (const h of m.heads) {
    ctx.strokeStyle = headColor(h);
    const from = focusQuery >= 0 ? focusQuery : first;
    const to = focusQuery >= 0 ? focusQuery + 1 : last;
    for (let q = from; q < to; q++) {
      const e = m.data.edges[h][q];
      for (let i = 0; i < e.keys.length; i++) {
        const k = e.keys[i];
        if (focusKey >= 0 && k !== focusKey) continue;
        if (!inFilter(m.filter, m.bStart, q, k)) continue;
        ctx.globalAlpha = Math.min(1, e.weights[i]);
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
    for (let k = m.firstKey; k < m.lastKey; k++) {
      m.heads.forEach((h, n) => {
        const w = weightOf(m.data, h, focusQuery, k);
        if (!w || !inFilter(m.filter, m.bStart, focusQuery, k)) return;
        ctx.globalAlpha = Math.min(1, w);
        ctx.fillStyle = headColor(h);
        ctx.fillRect(lay.boxesX + n * lay.box, y(k) - lay.row / 2 + 3, lay.box - 1, lay.row - 6);
      });
    }
    ctx.globalAlpha = 1;
  }
  // Tokens; the pinned query underlined in the accent colour.
  ctx.fillStyle = m.textColor;
  ctx.textAlign = "right";
  const ink = (i) => (m.promptLen && i >= m.promptLen ? m.accent : m.textColor);
  for (let q = first; q < last; q++) {
    ctx.font = q === focusQuery ? BOLD : FONT;
    ctx.fillStyle = ink(q);
    ctx.fillText(m.queryTokens[q], lay.leftX - 6, y(q), lay.textWidth - 8);
  }
  if (m.pinned >= first && m.pinned < last) {
    ctx.fillStyle = m.accent;
    const w = Math.min(lay.textWidth - 8, ctx.measureText(m.queryTokens[m.pinned]).width);
    ctx.fillRect(lay.leftX - 6 - w, y(m.pinned) + lay.row / 2 - 3, w, 2);
    ctx.fillStyle = m.textColor;
  }
  ctx.textAlign = "left";
  for (let k = m.firstKey; k < m.lastKey; k++) {
    ctx.font = k === focusKey ? BOLD : FONT;
    ctx.fillStyle = ink(k);
    ctx.fillText(m.keyTokens[k], lay.keyX, y(k), lay.textWidth - 4);
  }
}

