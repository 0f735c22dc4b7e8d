// Colour legends, drawn on a canvas (the views' own legends and exported pictures) or written as
// SVG. A legend is { kind: "scale", label, lo, hi, color(t) -> css colour for t in [0, 1] } (a
// colour bar with its range) or { kind: "heads", heads } (one swatch per head shown).
import { headColor } from "./colors.js";
import { escapeHtml, formatValue } from "./format.js";

export const LEGEND_HEIGHT = 30;
const BAR = 160;

// Draw `legend` with its top-left at (x, y); returns the width used.
export function drawLegend(ctx, legend, x, y, textColor) {
  ctx.save();
  ctx.font = "12px system-ui, sans-serif";
  ctx.textBaseline = "middle";
  ctx.fillStyle = textColor;
  ctx.textAlign = "left";
  let at = x;
  if (legend.kind === "heads") {
    for (const [n, h] of legend.heads.entries()) {
      const label = `head ${legend.names?.[n] ?? h}`;
      ctx.fillStyle = headColor(h);
      ctx.fillRect(at, y + 8, 10, 10);
      ctx.fillStyle = textColor;
      ctx.fillText(label, at + 13, y + 13);
      at += 13 + ctx.measureText(label).width + 8;
    }
  } else {
    ctx.fillText(legend.label, at, y + 13);
    at += ctx.measureText(legend.label).width + 8;
    ctx.fillText(formatValue(legend.lo), at, y + 13);
    at += ctx.measureText(formatValue(legend.lo)).width + 4;
    for (let i = 0; i < BAR; i++) {
      ctx.fillStyle = legend.color(i / (BAR - 1));
      ctx.fillRect(at + i, y + 6, 1, 14);
    }
    ctx.strokeStyle = textColor;
    ctx.globalAlpha = 0.4;
    ctx.strokeRect(at - 0.5, y + 5.5, BAR + 1, 15);
    ctx.globalAlpha = 1;
    at += BAR + 4;
    ctx.fillStyle = textColor;
    ctx.fillText(formatValue(legend.hi), at, y + 13);
    at += ctx.measureText(formatValue(legend.hi)).width;
  }
  ctx.restore();
  return at - x;
}

// The same legend as SVG elements, top-left at (x, y).
export function legendSvg(legend, x, y, textColor) {
  const text = (tx, s) => `<text x="${tx}" y="${y + 17}" fill="${textColor}" font-size="12">${escapeHtml(s)}</text>`;
  if (legend.kind === "heads") {
    return legend.heads.map((h, n) => `<rect x="${x + n * 70}" y="${y + 8}" width="10" height="10" fill="${headColor(h)}"/>${text(x + n * 70 + 13, `head ${legend.names?.[n] ?? h}`)}`).join("");
  }
  const stops = Array.from({ length: 11 }, (_, i) => `<stop offset="${i / 10}" stop-color="${legend.color(i / 10)}"/>`).join("");
  const label = `${legend.label} ${formatValue(legend.lo)}`;
  const barX = x + label.length * 6.5 + 8;
  return `<defs><linearGradient id="legend-bar">${stops}</linearGradient></defs>${text(x, label)}` +
    `<rect x="${barX}" y="${y + 6}" width="${BAR}" height="14" fill="url(#legend-bar)" stroke="${textColor}" stroke-opacity="0.4"/>${text(barX + BAR + 4, formatValue(legend.hi))}`;
}
