// The head view as vector SVG (inputs with every weight loaded): the same lines, boxes and tokens
// as the canvas, one <line> per drawn weight. Returns { width, height, body } for export.js to
// frame with the title, background and legend.
import { headColor } from "../colors.js";
import { escapeHtml } from "../format.js";
import { inFilter } from "./head-data.js";

export function headSvg(m) {
  const { lay } = m;
  const rows = Math.max(m.queryTokens.length, m.keyTokens.length);
  const height = rows * lay.row + 4;
  const y = (i) => i * lay.row + lay.row / 2;
  const parts = [];
  for (const h of m.heads) {
    for (let q = 0; q < m.queryTokens.length; q++) {
      if (m.pinned >= 0 && q !== m.pinned) continue;
      const e = m.data.edges[h][q];
      for (let i = 0; i < e.keys.length; i++) {
        if (!inFilter(m.filter, m.bStart, q, e.keys[i])) continue;
        parts.push(`<line x1="${lay.leftX + 4}" y1="${y(q)}" x2="${lay.rightX - 4}" y2="${y(e.keys[i])}" stroke="${headColor(h)}" stroke-width="2" stroke-opacity="${Math.min(1, e.weights[i]).toFixed(4)}"/>`);
      }
    }
  }
  m.queryTokens.forEach((t, i) => parts.push(`<text x="${lay.leftX - 6}" y="${y(i) + 4}" text-anchor="end"${i === m.pinned ? ' font-weight="bold"' : ""}>${escapeHtml(t)}</text>`));
  m.keyTokens.forEach((t, i) => parts.push(`<text x="${lay.keyX}" y="${y(i) + 4}">${escapeHtml(t)}</text>`));
  return { width: lay.width, height, body: `<g font-family="sans-serif" font-size="13" fill="${m.textColor}">\n${parts.join("\n")}\n</g>` };
}
