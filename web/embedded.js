// The transport of standalone files: answers the viewer's calls from data embedded in the page
// (`<script type="application/json" id="attnscope-data">`, written by attnscope.web.standalone).
//
// Embedded per kind of attention: every head's full attention (float16), the model view's pooled
// thumbnails and head statistics, and neuron views for the query tokens chosen at export time.
import { halfToFloat, useTransport } from "./data.js";

const data = JSON.parse(document.getElementById("attnscope-data").textContent);
window.attnscopeEmbedded = data;

function fail(code, message) {
  throw new Error(`${code}: ${message}`);
}

function tensorMessages(name, t) {
  return [{ tensor: { name, dtype: t.dtype, shape: t.shape, data: t.data, offset: "0", totalBytes: String(t.bytes) } }];
}

function slice2d(values, cols, rows, colRange) {
  // rows: [r0, r1), colRange: [c0, c1) of a row-major float matrix -> Float32Array
  const [r0, r1] = rows;
  const [c0, c1] = colRange;
  const out = new Float32Array((r1 - r0) * (c1 - c0));
  for (let r = r0; r < r1; r++) out.set(values.subarray(r * cols + c0, r * cols + c1), (r - r0) * (c1 - c0));
  return out;
}

function f32Message(name, shape, values) {
  const bytes = new Uint8Array(values.buffer, values.byteOffset, values.byteLength);
  let binary = "";
  for (let i = 0; i < bytes.length; i += 0x8000) binary += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return { tensor: { name, dtype: "FLOAT32", shape: shape.map(String), data: btoa(binary), offset: "0", totalBytes: String(values.byteLength) } };
}

const decoded = new Map();
function attentionOf(kind, layer, head) {
  const key = `${kind}/${layer}/${head}`;
  if (!decoded.has(key)) {
    const t = data.attention[kind]?.[layer]?.[head];
    if (!t) fail("NOT_FOUND", `this file holds no attention for ${kind} layer ${layer} head ${head}`);
    const raw = Uint8Array.from(atob(t.data), (c) => c.charCodeAt(0));
    decoded.set(key, { rows: t.shape[0], cols: t.shape[1], values: halfToFloat(new Uint16Array(raw.buffer)) });
  }
  return decoded.get(key);
}

function rangeOf(r, n) {
  const start = Number(r?.start || 0);
  const stop = Number(r?.stop || 0) || n;
  if (start < 0 || stop > n || stop <= start) fail("OUT_OF_RANGE", `range [${start}, ${stop}) outside [0, ${n})`);
  return [start, stop];
}

function answer(view, index, info) {
  const kind = view.kind || info.kinds[0];
  if (!info.kinds.includes(kind)) fail("INVALID_ARGUMENT", `kind must be one of ${info.kinds.join(", ")}`);
  if (view.tile) {
    const { layer = 0, head = 0 } = view.tile;
    const a = attentionOf(kind, layer, head);
    const q = rangeOf(view.tile.queries, a.rows);
    const k = rangeOf(view.tile.keys, a.cols);
    return [f32Message(view.name || `tile/${index}`, [q[1] - q[0], k[1] - k[0]], slice2d(a.values, a.cols, q, k))];
  }
  if (view.pooled) {
    const { size = 0, selection = {} } = view.pooled;
    const thumbs = data.pooled[kind];
    const layers = selection.layers?.length ? selection.layers : null;
    const heads = selection.heads?.length ? selection.heads : null;
    if (thumbs && (!size || size === thumbs.size) && !layers && !heads) return tensorMessages(view.name || "pooled", thumbs.tensor);
    if (!thumbs && !layers && !heads) {
      // Short inputs: the thumbnails are the full attention of every head, stacked.
      const { numLayers, numHeads } = info;
      const first = attentionOf(kind, 0, 0);
      const cells = first.rows * first.cols;
      const all = new Float32Array(numLayers * numHeads * cells);
      for (let l = 0; l < numLayers; l++) for (let h = 0; h < numHeads; h++) all.set(attentionOf(kind, l, h).values, (l * numHeads + h) * cells);
      return [f32Message(view.name || "pooled", [numLayers, numHeads, first.rows, first.cols], all)];
    }
    // A pooled map as large as the matrix is the matrix itself (blocks of one position).
    if (layers?.length === 1 && heads?.length === 1) {
      const a = attentionOf(kind, layers[0], heads[0]);
      if (size >= Math.max(a.rows, a.cols)) return [f32Message(view.name || "pooled", [1, 1, a.rows, a.cols], a.values)];
    }
    fail("UNIMPLEMENTED", "this file holds pooled maps only at the sizes its views use");
  }
  if (view.headStats) {
    const stats = data.headStats[kind];
    return Object.entries(stats).flatMap(([name, t]) => tensorMessages(`${view.name || "head_stats"}/${name}`, t));
  }
  if (view.neuron) {
    const { layer = 0, head = 0, query = 0 } = view.neuron;
    const row = data.neuron?.[kind]?.rows[`${layer}/${head}/${query}`];
    if (!row) {
      const chosen = data.neuronQueries?.length ? data.neuronQueries.join(", ") : "none";
      fail("NOT_FOUND", `this file holds neuron views for query tokens ${chosen} only; token ${query} was not exported`);
    }
    const kt = data.neuron[kind].keys[`${layer}/${head}`];
    const k = halfToFloat(new Uint16Array(Uint8Array.from(atob(kt.data), (c) => c.charCodeAt(0)).buffer));
    const q = new Float32Array(Uint8Array.from(atob(row.q.data), (c) => c.charCodeAt(0)).buffer);
    const dim = q.length;
    const qk = new Float32Array(k.length);
    for (let i = 0; i < k.length; i++) qk[i] = q[i % dim] * k[i];
    const name = view.name || `neuron/${index}`;
    return [
      ...tensorMessages(`${name}/q`, row.q),
      f32Message(`${name}/k`, [k.length / dim, dim], k),
      f32Message(`${name}/q_times_k`, [k.length / dim, dim], qk),
      ...tensorMessages(`${name}/scores`, row.scores),
      ...tensorMessages(`${name}/probs`, row.probs),
    ];
  }
  fail("UNIMPLEMENTED", "this view is not available in a standalone file");
}

useTransport(async (method, body) => {
  const info = data.info;
  switch (method) {
    case "ListModels":
      return { models: [data.model] };
    case "CreateTrace":
      return info;
    case "DeleteTrace":
      return { deleted: false };
    case "GetViews":
    case "Extract":
      return [{ info }, ...(body.views || []).flatMap((v, i) => answer(v, i, info))];
    default:
      fail("UNIMPLEMENTED", `${method} is not available in a standalone file`);
  }
});
