// Colours shared by the views: one per head, and a diverging scale for signed values.

const HEAD_COLORS = [
  "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b",
  "#e377c2", "#7f7f7f", "#bcbd22", "#17becf", "#393b79", "#ad494a",
];

export function headColor(h) {
  if (h < HEAD_COLORS.length) return HEAD_COLORS[h];
  return `hsl(${(h * 137.508) % 360}, 65%, 45%)`;
}

export function rgbOf(color) {
  const probe = document.createElement("canvas").getContext("2d");
  probe.fillStyle = color;
  const hex = probe.fillStyle; // normalized to #rrggbb
  return [1, 3, 5].map((i) => Number.parseInt(hex.slice(i, i + 2), 16));
}

// Blue for positive, orange for negative, intensity by |v| / scale (bertviz's neuron view).
export function signedColor(v, scale) {
  const t = Math.min(1, Math.abs(v) / (scale || 1));
  const [r, g, b] = v >= 0 ? [31, 119, 180] : [255, 127, 14];
  return `rgba(${r}, ${g}, ${b}, ${t.toFixed(3)})`;
}

// Sequential map for probabilities: white (0) to deep blue (1), gamma to see small values.
export function heat(p, dark = false) {
  const t = Math.sqrt(Math.max(0, Math.min(1, p)));
  if (dark) return [Math.round(20 + 60 * t), Math.round(20 + 140 * t), Math.round(30 + 225 * t)];
  return [Math.round(255 - 225 * t), Math.round(255 - 150 * t), Math.round(255 - 75 * t)];
}
