// How numbers and tokens are written for people: every readout, label and export uses these, so
// that no non-zero weight reads as 0 and repeated tokens are told apart by position.

// A value with 3 significant digits: 0.988, 0.00133, 7.70e-4 (scientific below 0.001), 0 only for 0.
export function formatValue(v) {
  if (v === 0) return "0";
  if (!Number.isFinite(v)) return String(v);
  const a = Math.abs(v);
  if (a >= 1e-3 && a < 1e3) return v.toPrecision(3);
  return v.toExponential(2);
}

// The token at `i`, with its position when the same token occurs elsewhere in `tokens`
// ("the #4"), so readouts of repeated tokens say which one they mean.
export function tokenLabel(tokens, i) {
  const t = tokens[i] ?? `#${i}`;
  return repeats(tokens).has(t) ? `${t} #${i}` : t;
}

const repeatCache = new WeakMap();
function repeats(tokens) {
  let set = repeatCache.get(tokens);
  if (!set) {
    const seen = new Set();
    set = new Set();
    for (const t of tokens) (seen.has(t) ? set : seen).add(t);
    repeatCache.set(tokens, set);
  }
  return set;
}

// A token as a word, for search: subword markers (##, Ġ, ▁) dropped, lower case.
export function normalizeToken(t) {
  return String(t).replace(/^(##|Ġ|▁|Ċ)/, "").trim().toLowerCase();
}

// Positions of `tokens` that are the searched word (none for an empty search).
export function matches(tokens, search) {
  const want = normalizeToken(search || "");
  const out = [];
  if (!want) return out;
  tokens.forEach((t, i) => {
    if (normalizeToken(t) === want) out.push(i);
  });
  return out;
}

export function escapeHtml(s) {
  return String(s).replace(/[<>&"]/g, (c) => ({ "<": "&lt;", ">": "&gt;", "&": "&amp;", '"': "&quot;" })[c]);
}

// The page's colours (CSS variables of the current theme).
export function themeColor(name, fallback) {
  return getComputedStyle(document.documentElement).getPropertyValue(name).trim() || fallback;
}
