// The viewer's state: one object, mirrored in the URL so that a link reproduces the picture.
// Changes mark the page dirty; one requestAnimationFrame redraws (uPlot's pattern): event handlers
// only set state (`update`) or a view's own interaction state and `invalidate`, never draw or fetch.

const DEFAULTS = {
  model: "",
  text: "The doctor asked the nurse a question. She said she would help.",
  pair: "",
  generate: 0, // new tokens the model generates after the text before it is traced (0 = none)
  view: "head", // head | model | neuron | text
  kind: "", // encoder | decoder | cross ("" = the model's default)
  layer: 0,
  head: -1, // -1 = all heads
  heads: "", // head view: comma-separated heads shown at start ("" = all)
  query: -1, // pinned query token (-1 = none)
  filter: "all", // sentence filter for pairs: all | AA | AB | BA | BB
  sort: "", // model view: head statistic to sort and colour by
  compare: "", // a second text to compare with
  search: "", // a word whose occurrences every view highlights
  sinks: 0, // 1: every view with the trace's attention sinks left out, rows renormalised
  maps: "", // model view: "" pooled attention maps | "spans" each head's span map
  spans: "", // model view's span maps: "sentences" (KindInfo.sentences) or a count of equal spans ("" = sentences when the text has several, else 8)
  shade: "received", // text view: received | rollout | from | spans (views/text-data.js)
  sel: "", // text view: the selected tokens, comma-separated positions
  layers: "", // text view: the layer range "first-last" ("" = all layers)
  passage: 32, // text view: tokens per passage, or "sentences" (the text's sentences; the top passages and the span mass)
  theme: "light",
};
const NUMBERS = new Set(["layer", "head", "query", "sinks", "generate"]);
// A count, or a word naming another unit ("sentences"): "16" -> 16, "sentences" -> "sentences".
const COUNTS_OR_WORDS = new Set(["spans", "passage"]);

export const state = { ...DEFAULTS };
const listeners = new Set();
let pending = false;

export function loadFromUrl(search = window.location.search, initial = {}) {
  // `initial`: a starting state chosen at export time; the URL, when it says otherwise, wins.
  for (const [key, value] of Object.entries(initial)) if (key in DEFAULTS) state[key] = value;
  const params = new URLSearchParams(search);
  for (const key of Object.keys(DEFAULTS)) {
    if (!params.has(key)) continue;
    const raw = params.get(key);
    if (COUNTS_OR_WORDS.has(key)) state[key] = /^\d+$/.test(raw) ? Number(raw) : raw;
    else state[key] = NUMBERS.has(key) ? Number.parseInt(raw, 10) : raw;
    if (NUMBERS.has(key) && Number.isNaN(state[key])) state[key] = DEFAULTS[key];
  }
}

function saveToUrl() {
  const params = new URLSearchParams();
  for (const [key, value] of Object.entries(state)) {
    if (value !== DEFAULTS[key]) params.set(key, String(value));
  }
  const query = params.toString();
  try {
    window.history.replaceState(null, "", query ? `?${query}` : window.location.pathname);
  } catch {
    // about:srcdoc (notebook iframes) has no URL to keep the state in: the picture still works.
  }
}

const frames = new Set(); // views' own redraws (hover, scroll, wheel, drag) due in the next frame
let stateChanged = false;

function requestFrame() {
  if (pending) return;
  pending = true;
  requestAnimationFrame(() => {
    pending = false;
    const rendering = stateChanged;
    stateChanged = false;
    const draws = [...frames];
    frames.clear();
    if (rendering) for (const fn of listeners) fn(state);
    for (const fn of draws) fn();
  });
}

// Change the state: the URL follows at once, the listeners (main.js's render) run in the next frame.
export function update(patch) {
  Object.assign(state, patch);
  saveToUrl();
  stateChanged = true;
  requestFrame();
}

// A view's redraw of its own interaction state (nothing in the URL changed): `draw` runs once in
// the next frame, however many events asked for it.
export function invalidate(draw) {
  frames.add(draw);
  requestFrame();
}

// Whether a frame is due (for `window.attnscopeIdle`, which tests and tools wait on).
export function framePending() {
  return pending;
}

export function subscribe(fn) {
  listeners.add(fn);
  return () => listeners.delete(fn);
}

// A counter of async renders: `const g = renders.start()` before loading; `renders.isCurrent(g)`
// after each await is false once a newer render started, and then the older one must not draw.
export function generations() {
  let latest = 0;
  return { start: () => ++latest, isCurrent: (g) => g === latest };
}
