// Keyboard navigation and token search, for every view: arrows move the query token (↑/← back,
// ↓/→ on), PageUp/PageDown a layer, h/m/n/t switch to the head/model/neuron/text view, "/" goes to the
// search box, Escape unpins the query. The search box's word is highlighted in every view; Enter
// (Shift+Enter: back) pins its next occurrence as the query.
import { matches } from "./format.js";

const VIEW_KEYS = { h: "head", m: "model", n: "neuron", t: "text" };

function typing(target) {
  return target instanceof HTMLInputElement || target instanceof HTMLSelectElement || target instanceof HTMLTextAreaElement;
}

// `app.shown()`: the KindInfo on screen (or null); `search`: the search input; `count`: its counter.
export function installKeys(app, search, count) {
  const kind = () => app.shown();
  const clamp = (v, n) => Math.max(0, Math.min(n - 1, v));

  document.addEventListener("keydown", (event) => {
    if (event.ctrlKey || event.metaKey || event.altKey || typing(event.target)) return;
    const k = kind();
    const s = app.state;
    if (event.key in VIEW_KEYS) {
      const tab = document.querySelector(`#tabs button[data-view=${VIEW_KEYS[event.key]}]`);
      return tab && !tab.hidden ? app.update({ view: VIEW_KEYS[event.key] }) : undefined;
    }
    if (event.key === "/") {
      event.preventDefault();
      return search.focus();
    }
    if (!k) return;
    const step = { ArrowDown: 1, ArrowRight: 1, ArrowUp: -1, ArrowLeft: -1 }[event.key];
    if (step) {
      event.preventDefault();
      const from = s.query < 0 ? (step > 0 ? -1 : k.queryLen) : s.query;
      return app.update({ query: clamp(from + step, k.queryLen) });
    }
    const layerStep = { PageDown: 1, PageUp: -1 }[event.key];
    if (layerStep) {
      event.preventDefault();
      return app.update({ layer: clamp(s.layer + layerStep, k.numLayers) });
    }
    if (event.key === "Escape" && s.query >= 0) app.update({ query: -1 });
  });

  search.addEventListener("input", () => app.update({ search: search.value.trim() }));
  search.addEventListener("keydown", (event) => {
    const k = kind();
    if (event.key !== "Enter" || !k) return;
    event.preventDefault();
    const found = matches(k.queryTokens, app.state.search);
    if (!found.length) return;
    const q = app.state.query;
    const next = event.shiftKey ? [...found].reverse().find((i) => i < q) ?? found[found.length - 1] : found.find((i) => i > q) ?? found[0];
    app.update({ query: next });
  });

  // The counter beside the box: how many query tokens match (after each render).
  return function showCount() {
    const k = kind();
    if (search.value.trim() !== app.state.search) search.value = app.state.search;
    const n = k && app.state.search ? matches(k.queryTokens, app.state.search).length : null;
    count.textContent = n === null ? "" : `${n} found${n ? " · Enter: next" : ""}`;
  };
}
