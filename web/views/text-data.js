// The text view's numbers: one value per token of the quantity chosen, read from one GetViews
// call, and the passages ranked by it. A passage is a window of `size` consecutive tokens
// [i·size, (i+1)·size) or one of the text's sentences (KindInfo.sentences), the same passages for
// every quantity; its mass is the sum of its tokens' values (span mass: the passage's own value).
import { getViews, views } from "../data.js";

// Query focus (QueryFocusView) of the selected tokens over the sentences before them.
export const FOCUS_DEFINITION =
  "query focus: the attention mass the question's tokens give to each context sentence (mean over the question's tokens), per layer and head; each cell shows the mass on the sentence the question reads most (over all layers and heads)";

// What each quantity is, as the legend states it. `selection`: needs selected tokens.
export const QUANTITIES = {
  received: {
    label: "attention received",
    selection: false,
    definition: "attention each token receives: Σ over queries q of P[q, token], mean over the chosen layers and heads",
  },
  rollout: {
    label: "rollout of the selected tokens",
    selection: true,
    definition:
      "attention rollout (Abnar & Zuidema 2020) of the selected tokens: each layer's head-mean P mixed with the residual, 0.5·I + 0.5·P̄, multiplied from the last chosen layer down to the first; mean over the selected tokens",
  },
  from: {
    label: "attention from the selected tokens",
    selection: true,
    definition: "attention the selected tokens give each token: P[q, token], mean over the selected tokens q and the chosen layers and heads",
  },
  spans: {
    label: "span mass",
    selection: false,
    definition:
      "mass between passages: with tokens selected, the mass the rows of their passages give to each passage's keys (mean over those rows, Σ over the passage's keys); with none, the mean over every query of the mass each passage receives; mean over the chosen layers and heads; every token shows its passage's value",
  },
};

// Consecutive windows [start, stop) of `size` tokens over `length` positions.
export function passagesOf(length, size) {
  const out = [];
  for (let start = 0; start < length; start += size) out.push([start, Math.min(length, start + size)]);
  return out;
}

// Token position -> the index of the passage holding it (-1: none), for `windows` [[start, stop], ...].
export function passageIndex(windows, length) {
  const out = new Int32Array(length).fill(-1);
  windows.forEach(([a, b], p) => out.fill(p, a, Math.min(b, length)));
  return out;
}

// Mean over the leading axes: `data` is [groups × n] row-major -> Float32Array [n].
function meanRows(data, n) {
  const groups = data.length / n;
  const out = new Float32Array(n);
  for (let g = 0; g < groups; g++) for (let i = 0; i < n; i++) out[i] += data[g * n + i];
  for (let i = 0; i < n; i++) out[i] /= groups;
  return out;
}

function sumOf(values, start, stop) {
  let total = 0;
  for (let i = start; i < stop; i++) total += values[i];
  return total;
}

// The request for quantity `shade` of `k` (a self-attention KindInfo), or null when it needs
// selected tokens and none are. o: { selected: [positions], layers: [..] ([] = all), heads,
// windows: the passages, [[start, stop], ...] in text order, covering the text }.
export function shadeRequest(shade, k, o) {
  const q = QUANTITIES[shade];
  if (!q) throw new Error(`the text view shades by ${Object.keys(QUANTITIES).join(", ")}; got ${shade}`);
  if (q.selection && !o.selected.length) return null;
  if (shade === "received") return views.received("shade", k.kind, o.layers, o.heads);
  if (shade === "rollout") return views.rollout("shade", o.selected, k.kind, o.layers, o.heads);
  if (shade === "from") return views.attentionFrom("shade", o.selected, k.kind, o.layers, o.heads);
  const passages = o.windows;
  const index = passageIndex(passages, k.keyLen);
  const rows = o.selected.length ? [...new Set(o.selected.map((i) => index[i]))].filter((p) => p >= 0).sort((a, b) => a - b).map((p) => passages[p]) : [[0, k.queryLen]];
  return views.spanPooled("shade", rows, k.kind, o.layers, o.heads, passages);
}

// One GetViews call -> { values: Float32Array [keyLen] (each token's value), passages: [{ start,
// stop, mass }] in text order, ranked: the passages the top list ranks (o.within > 0: those of
// tokens [0, within) only, cut there: the prompt of an answer being read), excluded: the keys a
// renormalisation left out }.
export async function loadShade(traceId, shade, k, o) {
  const request = shadeRequest(shade, k, o);
  if (!request) return null;
  const { info, tensors } = await getViews(traceId, [request]);
  const t = tensors.shade;
  const n = k.keyLen;
  const windows = o.windows;
  let values;
  let masses;
  if (shade === "spans") {
    masses = meanRows(t.data, windows.length);
    values = new Float32Array(n);
    windows.forEach(([a, b], p) => values.fill(masses[p], a, b));
  } else {
    values = meanRows(t.data, n);
    masses = windows.map(([a, b]) => sumOf(values, a, b));
  }
  const passages = windows.map(([start, stop], p) => ({ start, stop, mass: masses[p] }));
  const ranked = !o.within
    ? passages
    : passages.filter((p) => p.start < o.within).map((p) => {
      const stop = Math.min(p.stop, o.within);
      return { start: p.start, stop, mass: shade === "spans" ? p.mass : sumOf(values, p.start, stop) };
    });
  return { values, passages, ranked, excluded: info?.excludedKeys || [] };
}

// The `count` passages of most mass, the most first (ties: the earlier first).
export function topPassages(passages, count) {
  return [...passages].sort((a, b) => b.mass - a.mass || a.start - b.start).slice(0, count);
}

// The question and context of query focus for the selected tokens: the question is the range
// [first, last + 1) of the selection (QueryFocusView takes one range), the context the sentences
// before it, the one it starts in cut at its start. null when nothing precedes the question.
export function focusSpans(selected, sentences) {
  if (!selected.length || !sentences.length) return null;
  const question = [selected[0], selected[selected.length - 1] + 1];
  const contexts = sentences.filter(([a]) => a < question[0]).map(([a, b]) => [a, Math.min(b, question[0])]);
  return contexts.length ? { question, contexts } : null;
}

// Query focus of `spans` ({question, contexts}) for `k`: { question, contexts, layers, heads,
// values: Float32Array [layers × heads × contexts], top: the context index of most mean mass,
// mean: Float32Array [contexts] (mean over layers and heads) }.
export async function loadFocus(traceId, k, spans) {
  const { tensors } = await getViews(traceId, [views.queryFocus("focus", spans.question, spans.contexts, k.kind)], { quiet: true });
  const t = tensors.focus;
  const [layers, heads, n] = t.shape;
  const mean = new Float32Array(n);
  for (let i = 0; i < t.data.length; i++) mean[i % n] += t.data[i] / (layers * heads);
  let top = 0;
  for (let c = 1; c < n; c++) if (mean[c] > mean[top]) top = c;
  return { ...spans, layers, heads, values: t.data, mean, top };
}
