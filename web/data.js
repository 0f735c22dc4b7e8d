// The only module that knows the gateway's URLs and how tensors are encoded.

const DTYPES = { FLOAT32: Float32Array, INT64: BigInt64Array, INT32: Int32Array };

async function call(method, body) {
  const response = await fetch(`/api/${method}`, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
  });
  const data = await response.json();
  if (!response.ok) throw new Error(`${data.code}: ${data.message}`);
  return data;
}

// Join streamed Tensor pieces (base64 bytes, little-endian) into typed arrays by name.
function assemble(messages) {
  const parts = new Map();
  let info = null;
  for (const m of messages) {
    if (m.info) { info = m.info; continue; }
    const t = m.tensor;
    if (!parts.has(t.name)) parts.set(t.name, { t, chunks: [] });
    parts.get(t.name).chunks.push(t);
  }
  const tensors = {};
  for (const [name, { t, chunks }] of parts) {
    chunks.sort((a, b) => Number(a.offset || 0) - Number(b.offset || 0));
    const bytes = new Uint8Array(Number(t.totalBytes || 0));
    let at = 0;
    for (const c of chunks) {
      const raw = atob(c.data || "");
      for (let i = 0; i < raw.length; i++) bytes[at + i] = raw.charCodeAt(i);
      at += raw.length;
    }
    const Type = DTYPES[t.dtype] || Float16Array;
    tensors[name] = { shape: (t.shape || []).map(Number), data: new Type(bytes.buffer) };
  }
  return { info, tensors };
}

export async function listModels() {
  return (await call("ListModels", {})).models || [];
}

export async function extract(model, text) {
  return assemble(await call("Extract", { model, text }));
}
