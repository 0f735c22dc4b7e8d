// The transport of standalone files: answers the viewer's calls from data embedded in the page
// (`<script type="application/json" id="attnscope-data">`, written by
// attnscope.service.exports.standalone), with the same decoded shape as the HTTP transport:
// `{info, manifest, tensors}`, typed arrays. Each embedded tensor is decoded from base64 once.
//
// Embedded per kind of attention: every head's full attention (float16), the model view's pooled
// thumbnails and head statistics, and neuron views for the query tokens chosen at export time.
import { decodeTensor, kindName, useTransport } from "./data.js";

const data = JSON.parse(document.getElementById("attnscope-data").textContent);
window.attnscopeEmbedded = data;
const info = data.info; // TraceInfo, proto3 JSON
const kinds = info.kinds.map((k) => kindName(k.kind));
const kindInfo = Object.fromEntries(info.kinds.map((k) => [kindName(k.kind), k]));

function fail(code, message) {
  throw new Error(`${code}: ${message}`);
}

const decoded = new Map();
function tensor(key, t) {
  if (!decoded.has(key)) decoded.set(key, decodeTensor(key, t));
  return decoded.get(key);
}

function attentionOf(kind, layer, head) {
  const t = data.attention[kind]?.[layer]?.[head];
  if (!t) fail("NOT_FOUND", `this file holds no attention for ${kind} layer ${layer} head ${head}`);
  const a = tensor(`attention/${kind}/${layer}/${head}`, t);
  return { rows: a.shape[0], cols: a.shape[1], values: a.data };
}

function slice2d(values, cols, rows, colRange) {
  // rows: [r0, r1), colRange: [c0, c1) of a row-major float matrix -> Float32Array
  const [r0, r1] = rows;
  const [c0, c1] = colRange;
  const out = new Float32Array((r1 - r0) * (c1 - c0));
  for (let r = r0; r < r1; r++) out.set(values.subarray(r * cols + c0, r * cols + c1), (r - r0) * (c1 - c0));
  return out;
}

function rangeOf(r, n) {
  const start = Number(r?.start || 0);
  const stop = Number(r?.stop || 0) || n;
  if (start < 0 || stop > n || stop <= start) fail("OUT_OF_RANGE", `range [${start}, ${stop}) outside [0, ${n})`);
  return [start, stop];
}

// The server's names for unnamed views (see ViewRequest in the .proto).
const ASSIGNED = { pooled: "pooled", headStats: "head_stats", received: "received" };
const WHICH = ["tile", "pooled", "headStats", "neuron", "topk", "received"];

function pooled(kind, spec, name) {
  const { size = 0, selection = {} } = spec;
  const thumbs = data.pooled[kind];
  const layers = selection.layers?.length ? selection.layers : null;
  const heads = selection.heads?.length ? selection.heads : null;
  if (thumbs && (!size || size === thumbs.size) && !layers && !heads) return [[name, tensor(`pooled/${kind}`, thumbs.tensor)]];
  if (!thumbs && !layers && !heads) {
    // Short inputs: the thumbnails are the full attention of every head, stacked.
    const { numLayers = 0, numHeads = 0 } = kindInfo[kind];
    const first = attentionOf(kind, 0, 0);
    const cells = first.rows * first.cols;
    const all = new Float32Array(numLayers * numHeads * cells);
    for (let l = 0; l < numLayers; l++) for (let h = 0; h < numHeads; h++) all.set(attentionOf(kind, l, h).values, (l * numHeads + h) * cells);
    return [[name, { shape: [numLayers, numHeads, first.rows, first.cols], data: all }]];
  }
  // A pooled map as large as the matrix is the matrix itself (blocks of one position).
  if (layers?.length === 1 && heads?.length === 1) {
    const a = attentionOf(kind, layers[0], heads[0]);
    if (size >= Math.max(a.rows, a.cols)) return [[name, { shape: [1, 1, a.rows, a.cols], data: a.values }]];
  }
  fail("UNIMPLEMENTED", "this file holds pooled maps only at the sizes its views use");
}

function neuron(kind, spec, name) {
  const { layer = 0, head = 0, query = 0 } = spec;
  const row = data.neuron[kind]?.rows[`${layer}/${head}/${query}`];
  if (!row) {
    const chosen = data.neuronQueries[kind]?.length ? data.neuronQueries[kind].join(", ") : "none";
    fail("NOT_FOUND", `this file holds neuron views for query tokens ${chosen} only; token ${query} was not exported`);
  }
  const k = tensor(`neuron/${kind}/${layer}/${head}/k`, data.neuron[kind].keys[`${layer}/${head}`]);
  const part = (p) => tensor(`neuron/${kind}/${layer}/${head}/${query}/${p}`, row[p]);
  const q = part("q").data;
  const dim = q.length;
  const qk = new Float32Array(k.data.length);
  for (let i = 0; i < qk.length; i++) qk[i] = q[i % dim] * k.data[i];
  return [
    [`${name}/q`, part("q")],
    [`${name}/k`, k],
    [`${name}/q_times_k`, { shape: k.shape, data: qk }],
    [`${name}/scores`, part("scores")],
    [`${name}/probs`, part("probs")],
  ];
}

// [view name, [[tensor name, {shape, data}], ...]] of one requested view.
function answer(view, index) {
  const which = WHICH.find((w) => view[w]);
  if (!which) fail("INVALID_ARGUMENT", `view ${index} names no view`);
  const kind = view.kind && view.kind !== "KIND_SELF" ? kindName(view.kind) : kinds[0];
  if (!kinds.includes(kind)) fail("INVALID_ARGUMENT", `kind must be one of ${kinds.join(", ")}, got ${kind}`);
  const name = view.name || ASSIGNED[which] || `${which}/${index}`;
  return [name, parts(which, kind, view[which], name)];
}

function parts(which, kind, spec, name) {
  if (which === "tile") {
    const { layer = 0, head = 0 } = spec;
    const a = attentionOf(kind, layer, head);
    const q = rangeOf(spec.queries, a.rows);
    const k = rangeOf(spec.keys, a.cols);
    return [[name, { shape: [q[1] - q[0], k[1] - k[0]], data: slice2d(a.values, a.cols, q, k) }]];
  }
  if (which === "pooled") return pooled(kind, spec, name);
  if (which === "headStats") {
    const stats = data.headStats[kind];
    return data.serverInfo.headStats.map((s) => [`${name}/${s.name}`, tensor(`stats/${kind}/${s.name}`, stats[s.name])]);
  }
  if (which === "neuron") return neuron(kind, spec, name);
  fail("UNIMPLEMENTED", `${which} views are not available in a standalone file`);
}

function stream(body) {
  const manifest = { views: [] };
  const tensors = {};
  (body.views || []).forEach((view, index) => {
    const [name, named] = answer(view, index);
    for (const [tensorName, t] of named) {
      if (tensorName in tensors) fail("INVALID_ARGUMENT", `two views name the tensor ${tensorName}`);
      tensors[tensorName] = t;
    }
    manifest.views.push({ index, name, tensors: named.map(([n]) => n) });
  });
  return { info, manifest, tensors };
}

useTransport({
  async unary(method) {
    switch (method) {
      case "GetServerInfo":
        return data.serverInfo;
      case "ListModels":
        return { models: data.serverInfo.models };
      case "CreateTrace":
        return info;
      case "DeleteTrace":
        return { deleted: false };
      default:
        fail("UNIMPLEMENTED", `${method} is not available in a standalone file`);
    }
  },
  async stream(method, body) {
    if (method !== "GetViews" && method !== "Extract") fail("UNIMPLEMENTED", `${method} is not available in a standalone file`);
    return stream(body);
  },
});
