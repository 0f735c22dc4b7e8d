// The only module that knows the gateway's URLs and how tensors are encoded. A standalone file
// (exported HTML, notebooks) swaps the HTTP transport for one that answers from embedded data.

const DTYPES = { FLOAT32: Float32Array, INT64: BigInt64Array, INT32: Int32Array, FLOAT16: Uint16Array };

let transport = httpCall;

// Route every call through `fn(method, body) -> response JSON` instead of the HTTP gateway.
export function useTransport(fn) {
  transport = fn;
}

function call(method, body) {
  return transport(method, body);
}

async function httpCall(method, body) {
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

function decodeBase64(text, out, at) {
  const raw = atob(text || "");
  for (let i = 0; i < raw.length; i++) out[at + i] = raw.charCodeAt(i);
  return raw.length;
}

// Join streamed Tensor pieces (base64, little-endian, row-major) into typed arrays by name.
export function assemble(messages) {
  const parts = new Map();
  let info = null;
  for (const m of messages) {
    if (m.info) {
      info = m.info;
      continue;
    }
    const t = m.tensor;
    if (!parts.has(t.name)) parts.set(t.name, []);
    parts.get(t.name).push(t);
  }
  const tensors = {};
  for (const [name, pieces] of parts) {
    pieces.sort((a, b) => Number(a.offset || 0) - Number(b.offset || 0));
    const first = pieces[0];
    const bytes = new Uint8Array(Number(first.totalBytes || 0));
    let at = 0;
    for (const p of pieces) at += decodeBase64(p.data, bytes, at);
    const Type = DTYPES[first.dtype || "FLOAT32"];
    if (!Type) throw new Error(`tensor ${name}: unsupported dtype ${first.dtype}`);
    const raw = new Type(bytes.buffer);
    tensors[name] = { shape: (first.shape || []).map(Number), data: first.dtype === "FLOAT16" ? halfToFloat(raw) : raw };
  }
  return { info: normalizeInfo(info), tensors };
}

// IEEE half floats (as uint16) to Float32Array: the compact encoding of exported files.
export function halfToFloat(half) {
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

function normalizeInfo(info) {
  if (!info) return null;
  return {
    traceId: info.traceId || "",
    model: info.model || "",
    tokens: info.tokens || [],
    numLayers: info.numLayers || 0,
    numHeads: info.numHeads || 0,
    seqLen: info.seqLen || 0,
    kinds: info.kinds || [],
    sentenceBStart: info.sentenceBStart ?? -1,
    targetTokens: info.targetTokens || [],
  };
}

const range = (r) => (r ? { start: r[0], stop: r[1] } : undefined);

// View requests in the proto3 JSON mapping of attnscope.v1.ViewRequest.
export const views = {
  pooled: (size, kind = "", layers = [], heads = []) => ({ kind, pooled: { size, selection: { layers, heads } } }),
  headStats: (kind = "") => ({ kind, headStats: {} }),
  tile: (layer, head, queries, keys, kind = "") => ({ kind, tile: { layer, head, queries: range(queries), keys: range(keys) } }),
  topk: (layer, head, k, queries, kind = "") => ({ kind, topk: { layer, head, k, queries: range(queries) } }),
  neuron: (layer, head, query, keys, kind = "") => ({ kind, neuron: { layer, head, query, keys: range(keys) } }),
};

export async function listModels() {
  return (await call("ListModels", {})).models || [];
}

export async function createTrace({ model, text, pair }) {
  return normalizeInfo(await call("CreateTrace", { model, text, textPair: pair }));
}

export async function getViews(traceId, requested) {
  return assemble(await call("GetViews", { traceId, views: requested }));
}

export async function deleteTrace(traceId) {
  return call("DeleteTrace", { traceId });
}
