// Canvas sizing shared by the views: backing pixels follow devicePixelRatio (uPlot's pattern),
// and exports draw the same pure picture into an offscreen canvas at their own scale.

// Size `canvas` to width × height CSS pixels at the device's pixel ratio; returns its context,
// scaled so that drawing uses CSS pixels.
export function sizeCanvas(canvas, width, height, scale = window.devicePixelRatio || 1) {
  canvas.style.width = `${width}px`;
  canvas.style.height = `${height}px`;
  canvas.width = Math.round(width * scale);
  canvas.height = Math.round(height * scale);
  const ctx = canvas.getContext("2d");
  ctx.setTransform(scale, 0, 0, scale, 0, 0);
  return ctx;
}

// An offscreen picture for export: `paint(ctx)` draws width × height CSS pixels at `scale`.
export function picture(width, height, scale, paint) {
  const canvas = document.createElement("canvas");
  canvas.width = Math.round(width * scale);
  canvas.height = Math.round(height * scale);
  const ctx = canvas.getContext("2d");
  ctx.setTransform(scale, 0, 0, scale, 0, 0);
  paint(ctx);
  return { canvas, width, height };
}
