// The only module that knows the server's URLs and how tensors are encoded. Views get decoded
// data: `{info, manifest, tensors}` with every tensor a typed array, whichever transport answered.
//
// A transport is `{ unary(method, body) -> response JSON, stream(method, body) -> {info, manifest,
// tensors} }`: the HTTP one below (the Connect protocol with proto3 JSON, streams decoded here
// piece by piece as they arrive), or the one of standalone files (embedded.js, answering from
// data decoded once with `decodeTensor`).

const DTYPES = { FLOAT32: Float32Array, INT64: BigInt64Array, INT32: Int32Array, FLOAT16: Uint16Array };
// proto Kind <-> the kind names of the Python API and of the viewer's URL state.
const KIND_NAMES = { KIND_ENCODER: "encoder", KIND_DECODER: "decoder", KIND_CROSS: "cross" };
const KIND_ENUMS = Object.fromEntries(Object.entries(KIND_NAMES).map(([e, n]) => [n, e]));
const NOTABLE = { NOTABLE_HIGH: "high", NOTABLE_LOW: "low" };
// proto HeadClass numbers (a head_classes tensor's values) -> the Python API's labels
// (HEAD_CLASS_PREVIOUS_TOKEN = 1 -> "previous-token"); 0 (unspecified) is never sent.
export const HEAD_CLASS_LABELS = ["", "previous-token", "induction", "duplicate-token", "first-token", "self", "local", "diffuse", "mixed"];

// "KIND_CROSS" (proto3 JSON of a concrete Kind) -> "cross".
export function kindName(kind) {
  if (!KIND_NAMES[kind]) throw new Error(`not a concrete kind of attention: ${kind}`);
  return KIND_NAMES[kind];
}

// ---- the HTTP transport: Connect ---------------------------------------------------------------
// Unary calls are `POST /attnscope.v1.AttentionService/<Method>` with JSON; an error answers with
// Connect's `{code, message}`. Streams (GetViews, Extract) are `application/connect+json`:
// enveloped messages (1 byte of flags, 4 bytes of big-endian length, the message), read as they
// arrive; the last one (flag 0x02) says how the call ended. Same-origin requests carry the
// server's token cookie, if it set one.
const SERVICE = "/attnscope.v1.AttentionService/";
const END_STREAM = 0x02;
const utf8 = new TextDecoder();

function callError(code, message) {
  return new Error(`${String(code || "unknown").toUpperCase()}: ${message || ""}`);
}

async function send(method, contentType, body) {
  try {
    return await fetch(SERVICE + method, {
      method: "POST",
      headers: { "Content-Type": contentType, "Connect-Protocol-Version": "1" },
      body,
      credentials: "same-origin",
      cache: "no-store",
    });
  } catch (err) {
    throw new Error(`the attnscope server did not answer (${err.message}); is \`attnscope serve\` running?`);
  }
}

// The error of a call the server refused (any status but 200).
async function refusal(response) {
  let data = null;
  try {
    data = await response.json();
  } catch {
    // not Connect's error JSON (a proxy's page): the status is all there is
  }
  if (data?.code) return callError(data.code, data.message);
  return new Error(`the server answered ${response.status} ${response.statusText}`);
}

async function unary(method, body) {
  const response = await send(method, "application/json", JSON.stringify(body));
  if (!response.ok) throw await refusal(response);
  return response.json();
}

// Bytes as they arrive, handed out in exact lengths (one copy per message, however it was cut).
class ByteQueue {
  constructor() {
    this.chunks = [];
    this.length = 0;
  }
  push(chunk) {
    this.chunks.push(chunk);
    this.length += chunk.length;
  }
  take(n) {
    const out = new Uint8Array(n);
    let at = 0;
    while (at < n) {
      const head = this.chunks[0];
      const used = Math.min(head.length, n - at);
      out.set(head.subarray(0, used), at);
      at += used;
      if (used === head.length) this.chunks.shift();
      else this.chunks[0] = head.subarray(used);
    }
    this.length -= n;
    return out;
  }
}

// A Connect stream's envelopes, each `{flags, data}` as soon as its last byte has arrived.
async function* envelopes(body) {
  const reader = body.getReader();
  const queue = new ByteQueue();
  let header = null;
  try {
    for (;;) {
      while (true) {
        if (!header && queue.length >= 5) {
          const h = queue.take(5);
          header = { flags: h[0], length: new DataView(h.buffer).getUint32(1) };
        }
        if (!header || queue.length < header.length) break;
        yield { flags: header.flags, data: queue.take(header.length) };
        header = null;
      }
      const { done, value } = await reader.read();
      if (done) break;
      queue.push(value);
    }
  } finally {
    reader.releaseLock();
  }
  if (header || queue.length) throw new Error("the stream broke off in the middle of a message");
}

// Progress of the streams under way, for the page's progress line: `listener({tensors, of, bytes})`
// as pieces arrive (summed over concurrent streams), `listener(null)` when none is left.
const active = new Set();
let progressListener = null;

export function onProgress(listener) {
  progressListener = listener;
}

function reportProgress() {
  if (!progressListener) return;
  if (!active.size) return progressListener(null);
  const sum = { tensors: 0, of: 0, bytes: 0 };
  for (const a of active) {
    const p = a.progress();
    sum.tensors += p.tensors;
    sum.of += p.of;
    sum.bytes += p.bytes;
  }
  progressListener(sum);
}

// `quiet`: a small side call (head classes, the excluded keys) the progress line leaves out.
async function stream(method, body, { quiet = false } = {}) {
  const json = new TextEncoder().encode(JSON.stringify(body));
  const framed = new Uint8Array(5 + json.length);
  new DataView(framed.buffer).setUint32(1, json.length); // flags 0: one uncompressed message
  framed.set(json, 5);
  const response = await send(method, "application/connect+json", framed);
  if (!response.ok) throw await refusal(response);
  const assembler = new Assembler();
  if (!quiet) active.add(assembler);
  let ended = false;
  try {
    for await (const { flags, data } of envelopes(response.body)) {
      const message = JSON.parse(utf8.decode(data));
      if (flags & END_STREAM) {
        if (message.error) throw callError(message.error.code, message.error.message);
        ended = true;
        break;
      }
      assembler.add(message);
      reportProgress();
    }
  } finally {
    active.delete(assembler);
    reportProgress();
  }
  if (!ended) throw new Error(`${method}: the stream ended before the server said how the call went`);
  return assembler.result();
}

const http = { unary, stream };

let transport = http;

// Answer every call from `t` ({unary, stream}) instead of the HTTP server.
export function useTransport(t) {
  transport = t;
}

// ---- decoding ---------------------------------------------------------------------------------
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

// A stream's messages (proto3 JSON: info, manifest, then Tensor pieces with base64 data), taken
// one by one as they arrive (each piece decoded into its tensor's bytes at once); `result()` is
// the decoded whole, where every tensor the manifest names must have arrived whole.
class Assembler {
  constructor() {
    this.info = null;
    this.manifest = { views: [] };
    this.parts = new Map(); // name -> { shape, dtype, bytes, got }
    this.bytes = 0;
    this.complete = 0;
  }
  add(m) {
    if (m.info) this.info = m.info;
    else if (m.manifest) this.manifest = normalizeManifest(m.manifest);
    else if (m.tensor) {
      const t = m.tensor;
      let part = this.parts.get(t.name);
      if (!part) {
        part = { shape: (t.shape || []).map(Number), dtype: t.dtype, bytes: new Uint8Array(Number(t.totalBytes || 0)), got: 0 };
        this.parts.set(t.name, part);
      }
      const raw = atob(t.data || "");
      const at = Number(t.offset || 0);
      if (at + raw.length > part.bytes.length) throw new Error(`tensor ${t.name}: piece past its ${part.bytes.length} bytes`);
      for (let i = 0; i < raw.length; i++) part.bytes[at + i] = raw.charCodeAt(i);
      part.got += raw.length;
      this.bytes += raw.length;
      if (part.got === part.bytes.length) this.complete += 1;
    }
  }
  progress() {
    const of = this.manifest.views.reduce((n, v) => n + v.tensors.length, 0);
    return { tensors: this.complete, of, bytes: this.bytes };
  }
  result() {
    const tensors = {};
    for (const [name, p] of this.parts) {
      if (p.got !== p.bytes.length) throw new Error(`tensor ${name}: got ${p.got} bytes of ${p.bytes.length}`);
      tensors[name] = { shape: p.shape, data: typed(name, p.dtype, p.bytes) };
    }
    for (const v of this.manifest.views) {
      for (const name of v.tensors) if (!(name in tensors)) throw new Error(`the stream lacks tensor ${name} of view ${v.name}`);
    }
    return { info: this.info, manifest: this.manifest, tensors };
  }
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
    // { rows, cols, firstPatch } where the tokens are an image's patches; null for text.
    // The text's sentences as [start, stop) query ranges, in order, covering every query
    // (KindInfo.sentences; [] for patches and from servers before it).
    sentences: (k.sentences || []).map((r) => [Number(r.start || 0), Number(r.stop || 0) || k.queryLen || 0]),
    patchGrid: k.patchGrid ? { rows: k.patchGrid.rows || 0, cols: k.patchGrid.cols || 0, firstPatch: k.patchGrid.firstPatch || 0 } : null,
  };
}

// ModelInfo, with what it takes: servers from before images are text-only.
function normalizeModel(m) {
  const takesImages = Boolean(m.takesImages);
  return { ...m, takesImages, takesText: m.takesText === undefined ? !takesImages : Boolean(m.takesText), canGenerate: Boolean(m.canGenerate) };
}

// TraceInfo -> { traceId, model, method, kinds: [KindInfo...] (the default first), kindNames, kind(name) }:
// `kind(name)` is the entry of that kind, or the default one for "" or a kind the trace lacks.
function normalizeInfo(info) {
  if (!info) return null;
  const kinds = (info.kinds || []).map(normalizeKind);
  const byName = new Map(kinds.map((k) => [k.kind, k]));
  return {
    traceId: info.traceId || "",
    model: info.model || "",
    method: info.method || "capture",
    kinds,
    kindNames: kinds.map((k) => k.kind),
    kind: (name) => byName.get(name) || kinds[0],
    // The keys a request's Renormalize left out of the views (GetViews' info), ascending.
    excludedKeys: (info.excludedKeys || []).map(Number),
    // Generation traces: positions [0, promptLen) are the prompt, the rest was generated (0: not one).
    promptLen: info.promptLen || 0,
    generatedText: info.generatedText || "",
    // Where the generated tokens start on the axes of `kind` (0: none there; cross attention's keys are the prompt's).
    generatedFrom: (kind) => (kind === "cross" ? 0 : info.promptLen || 0),
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
    models: (s.models || []).map(normalizeModel),
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
  headClasses: (name, kind = "") => request(name, kind, { headClasses: {} }),
  sinks: (name, threshold, kind = "") => request(name, kind, { sinks: { threshold } }),
  received: (name, kind = "", layers = [], heads = []) => request(name, kind, { received: { selection: { layers, heads } } }),
  rollout: (name, queries, kind = "", layers = [], heads = [], residual = undefined) =>
    request(name, kind, { rollout: { queries, residual, selection: { layers, heads } } }),
  // `spans`, `keySpans`: [[start, stop], ...] token ranges (keySpans [] = the same as spans).
  spanPooled: (name, spans, kind = "", layers = [], heads = [], keySpans = []) =>
    request(name, kind, { spanPooled: { spans: spans.map(range), keySpans: keySpans.map(range), selection: { layers, heads } } }),
  attentionFrom: (name, queries, kind = "", layers = [], heads = []) => request(name, kind, { attentionFrom: { queries, selection: { layers, heads } } }),
  // `queries` [] = the positions that produced a generation trace's generated tokens.
  retrieval: (name, queries = [], kind = "") => request(name, kind, { retrieval: { queries } }),
  // `question`: [start, stop) of the question's queries; `contextSpans`: [[start, stop], ...] of keys.
  queryFocus: (name, question, contextSpans, kind = "") => request(name, kind, { queryFocus: { question: range(question), contextSpans: contextSpans.map(range) } }),
};

// The Renormalize every GetViews call carries (proto3 JSON, e.g. `{sinksThreshold: 0.2}`), or null
// for the attention as traced. main.js sets it from the state before a render; views tell the
// two apart in their cache keys by the trace info's `variant`.
let renormalizeWith = null;
export function renormalizeViews(r) {
  renormalizeWith = r || null;
}

let serverInfoPromise = null;

// The server's limits, the viewer's defaults, the head statistics and the models; asked once.
export function serverInfo() {
  if (!serverInfoPromise) {
    serverInfoPromise = transport.unary("GetServerInfo", {}).then(normalizeServerInfo);
    serverInfoPromise.catch(() => { serverInfoPromise = null; }); // a later call asks again
  }
  return serverInfoPromise;
}

// A trace of `text` (and `pair`), or of `image` (an image file's bytes, base64) instead;
// `generate` > 0: of the text and that many new tokens the model generates first (greedy).
export async function createTrace({ model, text, pair, image, generate = 0 }) {
  const body = image ? { model, image } : { model, text, textPair: pair };
  if (!image && generate > 0) body.generation = { maxNewTokens: generate };
  return normalizeInfo(await transport.unary("CreateTrace", body));
}

// An image file's bytes (a Uint8Array) in base64, as proto3 JSON carries `bytes`.
export function base64Of(bytes) {
  let binary = "";
  for (let i = 0; i < bytes.length; i += 0x8000) binary += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(binary);
}

// `options.quiet`: not counted on the progress line (small side calls).
export async function getViews(traceId, requested, options = {}) {
  const body = { traceId, views: requested };
  if (renormalizeWith) body.renormalize = renormalizeWith;
  const { info, manifest, tensors } = await transport.stream("GetViews", body, options);
  return { info: normalizeInfo(info), manifest, tensors };
}

export async function deleteTrace(traceId) {
  return transport.unary("DeleteTrace", { traceId });
}
