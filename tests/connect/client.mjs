// A third-party Connect client (connect-es: @connectrpc/connect + @connectrpc/connect-node) calling
// attnscope's HTTP side, as any Connect user would. Run by tests/test_connect_client.py:
//
//   node client.mjs BASE_URL DESCRIPTOR_SET TOKEN TEXT
//
// No code generation: the service's description is built at run time from the committed
// FileDescriptorSet (proto/attnscope/v1/attnscope.desc, compiled from the .proto by `make proto`)
// with @bufbuild/protobuf's registry, so the client always matches the wire contract and there
// is no generated file to keep in step. Prints one JSON object: what each call returned, per
// codec (binary protobuf and JSON), tensors as base64 of their whole bytes.
import { readFileSync } from "node:fs";
import { createFileRegistry, fromBinary } from "@bufbuild/protobuf";
import { FileDescriptorSetSchema } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";

const [baseUrl, descriptorSet, token, text] = process.argv.slice(2);
const registry = createFileRegistry(fromBinary(FileDescriptorSetSchema, readFileSync(descriptorSet)));
const service = registry.getService("attnscope.v1.AttentionService");
if (!service) throw new Error("the descriptor set has no attnscope.v1.AttentionService");

function clientFor(useBinaryFormat, bearer) {
  const interceptors = bearer ? [(next) => async (req) => { req.header.set("Authorization", `Bearer ${bearer}`); return next(req); }] : [];
  return createClient(service, createConnectTransport({ baseUrl, httpVersion: "1.1", useBinaryFormat, interceptors }));
}

// A call's error as {code: the Connect code's name, message}; null when it succeeded.
async function failure(promise) {
  try {
    await promise;
    return null;
  } catch (err) {
    const e = ConnectError.from(err);
    return { code: Code[e.code], message: e.rawMessage };
  }
}

async function drain(stream) {
  for await (const _ of stream);
}

async function run(useBinaryFormat) {
  const client = clientFor(useBinaryFormat, token);
  const info = await client.getServerInfo({});
  const models = await client.listModels({});
  const request = {
    text,
    views: [
      { name: "stats", view: { case: "headStats", value: {} } },
      { name: "map", view: { case: "pooled", value: { size: 3 } } },
    ],
  };
  let trace = null;
  let manifest = null;
  const pieces = new Map();
  let messages = 0;
  for await (const m of client.extract(request)) {
    messages += 1;
    if (m.piece.case === "info") trace = m.piece.value;
    else if (m.piece.case === "manifest") manifest = m.piece.value;
    else if (m.piece.case === "tensor") {
      const t = m.piece.value;
      if (!pieces.has(t.name)) pieces.set(t.name, []);
      pieces.get(t.name).push(t);
    }
  }
  const tensors = {};
  for (const [name, list] of pieces) {
    list.sort((a, b) => Number(a.offset - b.offset));
    const bytes = Buffer.concat(list.map((p) => Buffer.from(p.data)));
    if (bytes.length !== Number(list[0].totalBytes)) throw new Error(`${name}: ${bytes.length} of ${list[0].totalBytes} bytes`);
    tensors[name] = { dtype: list[0].dtype, shape: list[0].shape.map(Number), data: bytes.toString("base64") };
  }
  // A generation: Progress messages while the model generates, then the trace of prompt + answer.
  const progress = [];
  let generated = null;
  const reading = {};
  const generation = {
    text,
    generation: { maxNewTokens: 3 },
    views: [{ name: "read", view: { case: "retrieval", value: {} } }],
  };
  for await (const m of client.extract(generation)) {
    if (m.piece.case === "progress") progress.push(Number(m.piece.value.done));
    else if (m.piece.case === "info") generated = m.piece.value;
    else if (m.piece.case === "tensor") reading[m.piece.value.name] = Buffer.from(m.piece.value.data).toString("base64");
  }
  // Cancelled after the first message: the stream ends with Canceled on this side.
  const abort = new AbortController();
  let cancelled = null;
  try {
    for await (const _ of client.extract(request, { signal: abort.signal })) abort.abort();
  } catch (err) {
    cancelled = Code[ConnectError.from(err).code];
  }
  return {
    serverInfo: { version: info.version, maxTokens: Number(info.limits.maxTokens), headStats: info.headStats.map((h) => h.name) },
    models: models.models.map((m) => ({ name: m.name, isDefault: m.isDefault, numLayers: m.numLayers })),
    extract: {
      messages,
      tokens: trace.kinds[0].queryTokens,
      manifest: manifest.views.map((v) => ({ name: v.name, tensors: v.tensors })),
      tensors,
    },
    generation: {
      progress,
      promptLen: generated.promptLen,
      generatedIds: generated.generatedIds.map(Number),
      generatedText: generated.generatedText,
      tensors: reading,
    },
    cancelled,
    errors: {
      streamNotFound: await failure(drain(client.extract({ text, model: "nope" }))),
      unaryNotFound: await failure(client.createTrace({ text, model: "nope" })),
      unaryInvalid: await failure(client.createTrace({ text: "" })),
      noToken: await failure(clientFor(useBinaryFormat, null).listModels({})),
      wrongToken: await failure(drain(clientFor(useBinaryFormat, "wrong").extract(request))),
    },
  };
}

const out = { binary: await run(true), json: await run(false) };
process.stdout.write(JSON.stringify(out));
