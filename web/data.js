// The only module that knows the gateway's URLs and how tensors are encoded. Views get decoded
// data: `{info, manifest, tensors}` with every tensor a typed array, whichever transport answered.
//
// A transport is `{ unary(method, body) -> response JSON, stream(method, body) -> {info, manifest,
// tensors} }`: the HTTP one below (proto3 JSON from `POST /api/<Method>`, decoded here), or the one
// of standalone files (embedded.js, answering from data decoded once with `decodeTensor`).

const DTYPES = { FLOAT32: Float32Array, INT64: BigInt64Array, INT32: Int32Array, FLOAT16: Uint16Array };
// proto Kind <-> the kind names of the Python API and of the viewer's URL state.
const KIND_NAMES = { KIND_ENCODER: "encoder", KIND_DECODER: "decoder", KIND_CROSS: "cross" };
const KIND_ENUMS = Object.fromEntries(Object.entries(KIND_NAMES).map(([e, n]) => [n, e]));
const NOTABLE = { NOTABLE_HIGH: "high", NOTABLE_LOW: "low" };

// "KIND_CROSS" (proto3 JSON of a concrete Kind) -> "cross".
export function kindName(kind) {
  if (!KIND_NAMES[kind]) throw new Error(`not a concrete kind of attention: ${kind}`);
  return KIND_NAMES[kind];
}

// ---- the HTTP transport -----------------------------------------------------------------------
async function post(method, body) {
  let response;
  try {
    response = await fetch(`/api/${method}`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
  } catch (err) {
    throw new Error(`the attnscope server did not answer (${err.message}); is \`attnscope serve\` running?`);
  }
  let data;
  try {
    data = await response.json();
  } catch {
    throw new Error(`the server answered ${response.status} without JSON`);
  }
  if (!response.ok) throw new Error(`${data.code}: ${data.message}`);
  return data;
}

const http = {
  unary: post,
  stream: async (method, body) => assemble(await post(method, body)),
};

let transport = http;

// Answer every call from `t` ({unary, stream}) instead of the HTTP gateway.
export function useTransport(t) {
  transport = t;
}

// ---- decoding ---------------------------------------------------------------------------------
function base64Into(text, out, at) {
  const raw = atob(text || "");
  for (let i = 0; i < raw.length; i++) out[at + i] = raw.charCodeAt(i);
  return raw.length;
}

function typed(name, dtype, bytes) {
  const Type = DTYPES[dtype || "FLOAT32"];
  if (!Type) throw new Error(`tensor ${name}: unsupported dtype ${dtype}`);
  const raw = new Type(bytes.buffer, bytes.byteOffset, bytes.byteLength / Type.BYTES_PER_ELEMENT);
  return dtype === "FLOAT16" ? halfToFloat(raw) : raw;
}

// One tensor `{dtype, shape, data: base64}` (a whole wire Tensor, or one embedded in a standalone
// file) -> `{shape, data}` with data a typed array (float16 widened to Float32Array).
export function decodeTensor(name, t) {
  const raw = atob(t.data || "");
  const bytes = new Uint8Array(raw.length);
  for (let i = 0; i < raw.length; i++) bytes[i] = raw.charCodeAt(i);
  return { shape: (t.shape || []).map(Number), data: typed(name, t.dtype, bytes) };
}

// A stream's messages (proto3 JSON: info, manifest, then Tensor pieces with base64 data) -> the
// decoded result; every tensor the manifest names must have arrived whole.
function assemble(messages) {
  const parts = new Map();
  let info = null;
  let manifest = { views: [] };
  for (const m of messages) {
    if (m.info) info = m.info;
    else if (m.manifest) manifest = normalizeManifest(m.manifest);
    else if (m.tensor) {
      if (!parts.has(m.tensor.name)) parts.set(m.tensor.name, []);
      parts.get(m.tensor.name).push(m.tensor);
    }
  }
  const tensors = {};
  for (const [name, pieces] of parts) {
    pieces.sort((a, b) => Number(a.offset || 0) - Number(b.offset || 0));
    const first = pieces[0];
    const bytes = new Uint8Array(Number(first.totalBytes || 0));
    let at = 0;
    for (const p of pieces) at += base64Into(p.data, bytes, at);
    if (at !== bytes.length) throw new Error(`tensor ${name}: got ${at} bytes of ${bytes.length}`);
    tensors[name] = { shape: (first.shape || []).map(Number), data: typed(name, first.dtype, bytes) };
  }
  for (const v of manifest.views) {
    for (const name of v.tensors) if (!(name in tensors)) throw new Error(`the stream lacks tensor ${name} of view ${v.name}`);
  }
  return { info, manifest, tensors };
}

// IEEE half floats (as uint16) to Float32Array: the compact encoding of exported files.
function halfToFloat(half) {
  const out = new Float32Array(half.length);
  for (let i = 0; i < half.length; i++) {
    const h = half[i];
    const sign = h & 0x8000 ? -1 : 1;
    const exp = (h >> 10) & 0x1f;
    const frac = h & 0x3ff;
    if (exp === 0) out[i] = sign * 2 ** -14 * (frac / 1024);
    else if (exp === 31) out[i] = frac ? Number.NaN : sign * Number.POSITIVE_INFINITY;
    else out[i] = sign * 2 ** (exp - 15) * (1 + frac / 1024);
  }
  return out;
}

// ---- messages the views read ------------------------------------------------------------------
function normalizeKind(k) {
  // proto3 JSON leaves out fields at their default (0, "", []).
  return {
    kind: kindName(k.kind),
    numLayers: k.numLayers || 0,
    numHeads: k.numHeads || 0,
    numKeyHeads: k.numKeyHeads || 0,
    headDim: k.headDim || 0,
    queryTokens: k.queryTokens || [],
    keyTokens: k.keyTokens || [],
    queryLen: k.queryLen || 0,
    keyLen: k.keyLen || 0,
    sentenceBStart: k.sentenceBStart ?? 0,
  };
}

// TraceInfo -> { traceId, model, kinds: [KindInfo...] (the default first), kindNames, kind(name) }:
// `kind(name)` is the entry of that kind, or the default one for "" or a kind the trace lacks.
function normalizeInfo(info) {
  if (!info) return null;
  const kinds = (info.kinds || []).map(normalizeKind);
  const byName = new Map(kinds.map((k) => [k.kind, k]));
  return {
    traceId: info.traceId || "",
    model: info.model || "",
    kinds,
    kindNames: kinds.map((k) => k.kind),
    kind: (name) => byName.get(name) || kinds[0],
  };
}

function normalizeManifest(manifest) {
  return {
    views: (manifest.views || []).map((v) => ({ index: v.index || 0, name: v.name || "", tensors: v.tensors || [] })),
  };
}

function normalizeServerInfo(s) {
  const limits = Object.fromEntries(Object.entries(s.limits || {}).map(([k, v]) => [k, Number(v)]));
  const viewer = s.viewer || {};
  return {
    version: s.version || "",
    limits,
    viewer: {
      fullAttentionTokens: viewer.fullAttentionTokens || 0,
      headViewTopK: viewer.headViewTopK || 0,
      thumbnailSize: viewer.thumbnailSize || 0,
      tileSize: viewer.tileSize || 0,
    },
    headStats: (s.headStats || []).map((h) => ({ name: h.name, description: h.description || "", notable: NOTABLE[h.notable] || "high" })),
    models: s.models || [],
  };
}

// ---- requests ---------------------------------------------------------------------------------
const range = (r) => (r ? { start: r[0], stop: r[1] } : undefined);

function request(name, kind, view) {
  if (!name) throw new Error("every view request needs a name: its tensors are read by it");
  if (kind && !KIND_ENUMS[kind]) throw new Error(`kind must be one of ${Object.keys(KIND_ENUMS).join(", ")}, got ${kind}`);
  return kind ? { name, kind: KIND_ENUMS[kind], ...view } : { name, ...view };
}

// View requests in the proto3 JSON mapping of attnscope.v1.ViewRequest; `name` names the tensors
// ("<name>" for pooled and tile, "<name>/<part>" for headStats, topk and neuron).
export const views = {
  pooled: (name, size, kind = "", layers = [], heads = []) => request(name, kind, { pooled: { size, selection: { layers, heads } } }),
  headStats: (name, kind = "") => request(name, kind, { headStats: {} }),
  tile: (name, layer, head, queries, keys, kind = "") => request(name, kind, { tile: { layer, head, queries: range(queries), keys: range(keys) } }),
  topk: (name, layer, head, k, queries, kind = "") => request(name, kind, { topk: { layer, head, k, queries: range(queries) } }),
  neuron: (name, layer, head, query, keys, kind = "") => request(name, kind, { neuron: { layer, head, query, keys: range(keys) } }),
};

let serverInfoPromise = null;

// The server's limits, the viewer's defaults, the head statistics and the models; asked once.
export function serverInfo() {
  if (!serverInfoPromise) {
    serverInfoPromise = transport.unary("GetServerInfo", {}).then(normalizeServerInfo);
    serverInfoPromise.catch(() => { serverInfoPromise = null; }); // a later call asks again
  }
  return serverInfoPromise;
}

export async function createTrace({ model, text, pair }) {
  return normalizeInfo(await transport.unary("CreateTrace", { model, text, textPair: pair }));
}

export async function getViews(traceId, requested) {
  const { info, manifest, tensors } = await transport.stream("GetViews", { traceId, views: requested });
  return { info: normalizeInfo(info), manifest, tensors };
}

export async function deleteTrace(traceId) {
  return transport.unary("DeleteTrace", { traceId });
}
