// Exports that stand alone: an opaque background in the current theme, a title line (model, the
// text's start, and the view's own title: layer, head, kind) and the view's legend. PNG at 2×
// (print); SVG of every view (vector where the view draws vectors, the head view; else the
// view's picture embedded as a PNG image with the title and legend as vector text).
import { drawLegend, legendSvg, LEGEND_HEIGHT } from "./legend.js";
import { escapeHtml, themeColor } from "./format.js";

export const PNG_SCALE = 2;
const PAD = 12;
const TITLE = 28;

function colors() {
  return { background: themeColor("--bg", "#fff"), text: themeColor("--fg", "#222") };
}

export function titleOf(state, view) {
  const text = state.text.length > 48 ? `${state.text.slice(0, 48)}…` : state.text;
  return [state.model, `“${text}”`, view.exportTitle?.()].filter(Boolean).join(" · ");
}

// A canvas: the view's picture framed by the title and the legend, at PNG_SCALE.
export function pngCanvas(view, title) {
  const { background, text } = colors();
  const pic = view.exportPicture?.(PNG_SCALE, background);
  if (!pic) return null;
  const legend = view.exportLegend?.();
  const width = Math.max(pic.width, 480) + 2 * PAD;
  const height = TITLE + pic.height + (legend ? LEGEND_HEIGHT : 0) + PAD;
  const out = document.createElement("canvas");
  out.width = Math.round(width * PNG_SCALE);
  out.height = Math.round(height * PNG_SCALE);
  const ctx = out.getContext("2d");
  ctx.setTransform(PNG_SCALE, 0, 0, PNG_SCALE, 0, 0);
  ctx.fillStyle = background;
  ctx.fillRect(0, 0, width, height);
  ctx.fillStyle = text;
  ctx.font = "bold 14px system-ui, sans-serif";
  ctx.textBaseline = "middle";
  ctx.fillText(title, PAD, TITLE / 2, width - 2 * PAD);
  ctx.drawImage(pic.canvas, PAD, TITLE, pic.width, pic.height);
  if (legend) drawLegend(ctx, legend, PAD, TITLE + pic.height + 2, text);
  return out;
}

// SVG text of the view, framed like the PNG.
export function svgText(view, title) {
  const { background, text } = colors();
  let inner = view.exportSvg?.();
  if (!inner) {
    const pic = view.exportPicture?.(PNG_SCALE, background);
    if (!pic) return null;
    inner = { width: pic.width, height: pic.height, body: `<image width="${pic.width}" height="${pic.height}" href="${pic.canvas.toDataURL("image/png")}"/>` };
  }
  const legend = view.exportLegend?.();
  const width = Math.max(inner.width, 480) + 2 * PAD;
  const height = TITLE + inner.height + (legend ? LEGEND_HEIGHT : 0) + PAD;
  return [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-family="sans-serif">`,
    `<rect width="100%" height="100%" fill="${background}"/>`,
    `<text x="${PAD}" y="${TITLE / 2 + 5}" font-size="14" font-weight="bold" fill="${text}">${escapeHtml(title)}</text>`,
    `<g transform="translate(${PAD}, ${TITLE})">${inner.body}</g>`,
    legend ? legendSvg(legend, PAD, TITLE + inner.height + 2, text) : "",
    "</svg>",
  ].join("\n");
}
