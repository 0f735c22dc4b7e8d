// The head view's data: one layer's lines (every weight up to ViewerDefaults.full_attention_tokens
// tokens, each query's top-k keys beyond) and the head statistics, loaded in one GetViews call.
import { getViews, views } from "../data.js";
import { loadRetrieval, RETRIEVAL } from "./stats-table.js";

// Lines fainter than this are not drawn (they would not show); readouts and exports use every weight.
export const MIN_WEIGHT = 0.004;

function edgesOf(n, count, keyAt, weightAt) {
  const keys = [];
  const weights = [];
  for (let j = 0; j < count; j++) {
    const key = keyAt(j);
    const w = weightAt(j);
    if (key >= 0 && w >= MIN_WEIGHT) {
      keys.push(key);
      weights.push(w);
    }
  }
  return { keys: Int32Array.from(keys), weights: Float32Array.from(weights) };
}

// { edges, full, top, exact, lq, lk, topK, stats, classes }: edges[h][q] = { keys, weights } (the lines
// drawn); full[h] the exact lq × lk probabilities of head h (short inputs) or null; top[h] the
// top-k { indices, probs } (long inputs) or null; stats: { name: Float32Array [layers × heads] }.
// `k`: the KindInfo (data.js); `viewer`: ServerInfo's viewer defaults; `statNames`: head_stats;
// `withClasses`: also each head's class (`classes`, Int32Array [layers × heads] of HeadClass, else null);
// `withRetrieval`: also each head's retrieval score (a generation trace's), as stats.retrieval.
export async function loadLayer(traceId, k, layer, viewer, statNames = [], withClasses = false, withRetrieval = false) {
  const { queryLen: lq, keyLen: lk, numHeads: heads } = k;
  const exact = lq <= viewer.fullAttentionTokens && lk <= viewer.fullAttentionTokens;
  const topK = exact ? 0 : Math.min(viewer.headViewTopK, lk);
  const requested = [];
  for (let h = 0; h < heads; h++) {
    requested.push(exact ? views.tile(`head/${h}`, layer, h, null, null, k.kind) : views.topk(`top/${h}`, layer, h, topK, null, k.kind));
  }
  if (statNames.length) requested.push(views.headStats("stats", k.kind));
  if (withClasses) requested.push(views.headClasses("classes", k.kind));
  const retrieval = withRetrieval ? loadRetrieval(traceId, k) : null;
  const { tensors } = await getViews(traceId, requested);
  const edges = [];
  const full = [];
  const top = [];
  for (let h = 0; h < heads; h++) {
    const perQuery = [];
    if (exact) {
      const p = tensors[`head/${h}`].data;
      full.push(p);
      for (let q = 0; q < lq; q++) perQuery.push(edgesOf(q, lk, (j) => j, (j) => p[q * lk + j]));
    } else {
      const idx = tensors[`top/${h}/indices`].data;
      const probs = tensors[`top/${h}/probs`].data;
      top.push({ indices: idx, probs });
      for (let q = 0; q < lq; q++) perQuery.push(edgesOf(q, topK, (j) => Number(idx[q * topK + j]), (j) => probs[q * topK + j]));
    }
    edges.push(perQuery);
  }
  const stats = Object.fromEntries(statNames.map((name) => [name, tensors[`stats/${name}`].data]));
  const scores = await retrieval;
  if (scores) stats[RETRIEVAL.name] = scores;
  const classes = withClasses ? tensors.classes.data : null;
  return { edges, full: exact ? full : null, top: exact ? null : top, exact, lq, lk, topK, stats, classes };
}

// The weight of `head` from `query` to `key`: exact for short inputs; for long ones the top-k
// weight, or null when the key is not among the query's top k (its weight is not known here).
export function weightOf(d, head, query, key) {
  if (d.full) return d.full[head][query * d.lk + key];
  const { indices, probs } = d.top[head];
  for (let j = 0; j < d.topK; j++) if (Number(indices[query * d.topK + j]) === key) return probs[query * d.topK + j];
  return null;
}

// Whether the line q -> k passes the sentence filter (all | AA | AB | BA | BB; bStart < 0: no pair).
export function inFilter(filter, bStart, q, k) {
  if (filter === "all" || !filter || bStart < 0) return true;
  const qa = q < bStart;
  const ka = k < bStart;
  return { AA: qa && ka, AB: qa && !ka, BA: !qa && ka, BB: !qa && !ka }[filter] ?? true;
}

// The head view's JSON export: every weight (short inputs: each head's full matrix; long ones:
// each query's top-k keys and weights), never only the lines drawn.
export function layerJson(d) {
  if (d.full) return { exact: true, attention: d.full.map((p) => Array.from({ length: d.lq }, (_, q) => Array.from(p.subarray(q * d.lk, (q + 1) * d.lk)))) };
  return {
    exact: false, topK: d.topK,
    top: d.top.map(({ indices, probs }) => Array.from({ length: d.lq }, (_, q) => ({
      keys: Array.from(indices.subarray(q * d.topK, (q + 1) * d.topK), Number), weights: Array.from(probs.subarray(q * d.topK, (q + 1) * d.topK)),
    }))),
  };
}

// The key head query head `h` shares with others under grouped-query attention (KindInfo's
// num_key_heads), or null without grouping.
export function keyHeadOf(k, h) {
  if (!k.numKeyHeads || k.numKeyHeads >= k.numHeads) return null;
  return Math.floor(h / (k.numHeads / k.numKeyHeads));
}
