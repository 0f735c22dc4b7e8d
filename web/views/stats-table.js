// A table of head statistics (names and descriptions from GetServerInfo's head_stats, never
// written here): one row per head, sortable by a column (the notable end first), a click on a row
// picks that head. The model view shows every head; the head and neuron views the heads shown.
import { getViews, HEAD_CLASS_LABELS, views } from "../data.js";
import { escapeHtml, formatValue } from "../format.js";

export const CLASS_SORT = "class"; // the sort key of the class column (URL state sort=class)

// Each head's retrieval score (RetrievalView; the definition is the proto's, worded for a reader):
// a column beside GetServerInfo's head statistics, for generation traces.
export const RETRIEVAL = {
  name: "retrieval",
  description:
    "retrieval score (Wu et al. 2024): the share of the generated tokens for which the head's strongest key (exact top-1) holds the very token being generated, i.e. the head copies from the prompt",
  notable: "high",
};

// Whether `k` of the trace `info` has retrieval scores to show: a generation trace's self-attention
// with at least one generated token (a standalone file answers no analysis view: `analysis` false).
export function hasRetrieval(info, k, analysis) {
  const from = info.generatedFrom(k.kind);
  return Boolean(analysis) && k.kind !== "cross" && from > 0 && k.queryLen > from;
}

// Each head's retrieval score for `k` (Float32Array [layers × heads]), or null where the server
// cannot score it: a call of its own, so that the other statistics show whatever it answers.
export async function loadRetrieval(traceId, k) {
  try {
    const { tensors } = await getViews(traceId, [views.retrieval(RETRIEVAL.name, [], k.kind)], { quiet: true });
    return tensors[RETRIEVAL.name].data;
  } catch {
    return null; // the column is left out; the views' own calls report a trace that is gone
  }
}

// The head statistics a table shows: the server's, and retrieval where `values` hold it.
export function statsWith(stats, values) {
  return values?.[RETRIEVAL.name] ? [...stats, RETRIEVAL] : stats;
}

// `el`: the element to fill. m: { stats: [{name, description, notable}], values: {name: Float32Array
// [layers × heads]}, classes (Int32Array [layers × heads] of HeadClass numbers, a "class" column;
// null: none), numHeads, rows: [{layer, head}], sort (a statistic's name, CLASS_SORT or ""), selected:
// {layer, head} | null, layerName(l), headName(h) (the model's number of head h; default h), keyHead(h)
// (null without grouped-query attention), caption (when set, the rows' one layer is named there
// instead of in a column) }.
// Handlers: onSort(name), onPick({layer, head}).
export function renderStatsTable(el, m, { onSort, onPick } = {}) {
  const value = (name, r) => m.values[name]?.[r.layer * m.numHeads + r.head];
  const classOf = (r) => (m.classes ? HEAD_CLASS_LABELS[m.classes[r.layer * m.numHeads + r.head]] || "" : "");
  const rows = [...m.rows];
  const sortBy = m.stats.find((s) => s.name === m.sort);
  if (sortBy) {
    const sign = sortBy.notable === "low" ? 1 : -1;
    rows.sort((a, b) => sign * (value(sortBy.name, a) - value(sortBy.name, b)));
  } else if (m.sort === CLASS_SORT && m.classes) {
    rows.sort((a, b) => classOf(a).localeCompare(classOf(b))); // stable: heads of a class stay in order
  }
  const sortable = (name, title, label) =>
    `<th scope="col" class="sortable${name === m.sort ? " sorted" : ""}" data-stat="${escapeHtml(name)}" title="${escapeHtml(title)}${onSort ? " (click to sort)" : ""}">${label}</th>`;
  const grouped = rows.some((r) => m.keyHead(r.head) !== null);
  const layerCol = !m.caption;
  const classCol = m.classes ? sortable(CLASS_SORT, "what the head's statistics say it does (HeadClass)", "class") : "";
  const head = `<tr>${layerCol ? '<th scope="col">layer</th>' : ""}<th scope="col">head</th>${grouped ? '<th scope="col" title="the key head this query head shares (grouped-query attention)">kv</th>' : ""}${classCol}${m.stats
    .map((s) => sortable(s.name, s.description, escapeHtml(s.name).replace(/_/g, "_<wbr>")))
    .join("")}</tr>`;
  const body = rows
    .map((r) => {
      const sel = m.selected && m.selected.layer === r.layer && m.selected.head === r.head ? " selected" : "";
      const kv = grouped ? `<td>${m.keyHead(r.head)}</td>` : "";
      const layer = layerCol ? `<td>${escapeHtml(m.layerName(r.layer))}</td>` : "";
      const cls = m.classes ? `<td class="head-class">${escapeHtml(classOf(r))}</td>` : "";
      const name = m.headName ? m.headName(r.head) : String(r.head);
      return `<tr class="head-row${sel}" data-layer="${r.layer}" data-head="${r.head}">${layer}<td>${escapeHtml(name)}</td>${kv}${cls}${m.stats
        .map((s) => `<td>${formatValue(value(s.name, r))}</td>`)
        .join("")}</tr>`;
    })
    .join("");
  const caption = m.caption ? `<caption>${escapeHtml(m.caption)}</caption>` : "";
  el.innerHTML = `<table class="stats">${caption}<thead>${head}</thead><tbody>${body}</tbody></table>`;
  if (onSort) {
    for (const th of el.querySelectorAll("th.sortable")) th.addEventListener("click", () => onSort(th.dataset.stat === m.sort ? "" : th.dataset.stat));
  }
  if (onPick) {
    for (const tr of el.querySelectorAll("tr.head-row")) tr.addEventListener("click", () => onPick({ layer: Number(tr.dataset.layer), head: Number(tr.dataset.head) }));
  }
}
