// The viewer's state: one object, mirrored in the URL so that a link reproduces the picture.
// Changes mark the page dirty; one requestAnimationFrame redraws (uPlot's pattern).

const DEFAULTS = {
  model: "",
  text: "The doctor asked the nurse a question. She said she would help.",
  pair: "",
  view: "head", // head | model | neuron
  kind: "", // encoder | decoder | cross ("" = the model's default)
  layer: 0,
  head: -1, // -1 = all heads
  heads: "", // head view: comma-separated heads shown at start ("" = all)
  query: -1, // pinned query token (-1 = none)
  filter: "all", // sentence filter for pairs: all | AA | AB | BA | BB
  sort: "", // model view: head statistic to sort and colour by
  compare: "", // a second text to compare with
  theme: "light",
};
const NUMBERS = new Set(["layer", "head", "query"]);

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
    state[key] = NUMBERS.has(key) ? Number.parseInt(raw, 10) : raw;
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

export function update(patch) {
  Object.assign(state, patch);
  saveToUrl();
  if (pending) return;
  pending = true;
  requestAnimationFrame(() => {
    pending = false;
    for (const fn of listeners) fn(state);
  });
}

export function subscribe(fn) {
  listeners.add(fn);
  return () => listeners.delete(fn);
}
