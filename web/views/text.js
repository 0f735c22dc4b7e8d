// Text view: the input as running text, each token's background shaded by the quantity chosen
// (text-data.js: attention received, rollout or attention from the selected tokens, span mass),
// over a layer range and one head or all. Click a token to select it, shift-click to add one
// (the selection is in the URL). Beside the text: the scale and the quantity's definition, and the
// passages of most mass, one click scrolling to a passage and outlining it. Virtualised: the
// lines are laid out once per width (text-layout.js) and only the lines in view are in the page,
// so a 100k-token document scrolls as fast as a short one. With the sinks toggle on, the sinks
// the service left out are struck through (their values are 0 in the renormalised attention).
// A generation trace marks its generated tokens; "Read" selects them and shades the text by the
// attention they gave, the top passages then ranked over the prompt alone. Passages are windows of
// a number of tokens or the text's sentences. With tokens selected (the question), the side panel
// maps each layer × head's query focus on the context sentence the question reads most.
import { picture, sizeCanvas } from "../canvas.js";
import { heat } from "../colors.js";
import { escapeHtml, formatValue, matches, themeColor } from "../format.js";
import { drawLegend } from "../legend.js";
import { FOCUS_DEFINITION, focusSpans, loadFocus, loadShade, passageIndex, passagesOf, QUANTITIES, topPassages } from "./text-data.js";
import { layoutLines, measurer, piecesOf } from "./text-layout.js";

const FONT = "15px system-ui, sans-serif";
const LINE = 24; // CSS pixels per line
const OVERSCAN = 4; // lines above and below the view kept in the page
const TOP_PASSAGES = 10;
const PASSAGE_SIZES = [8, 16, 32, 64, 128, 256];
const SENTENCES = "sentences"; // the passage unit of the text's sentences (URL state passage=sentences)
const FOCUS_WIDTH = 320; // CSS pixels of the query focus map's widest extent
const PAD = 8; // the text's padding inside the scroller (style.css .text-scroller)

// The selection of the URL state: "3,17,40-44" -> [3, 17, 40, 41, 42, 43, 44] inside [0, n),
// ascending, each once (a range "a-b" holds both ends: the generated tokens of a long answer).
export function selectionOf(text, n) {
  const out = new Set();
  for (const part of String(text || "").split(",")) {
    const [a, b = a] = part.split("-").map((v) => Number.parseInt(v, 10));
    if (!Number.isInteger(a) || !Number.isInteger(b)) continue;
    for (let i = Math.max(0, a); i <= Math.min(b, n - 1); i++) out.add(i);
  }
  return [...out].sort((a, b) => a - b);
}

// The layer range of the URL state: "2-5" -> [2, 3, 4, 5]; "" -> [] (all layers).
export function layersOf(text, numLayers) {
  const m = /^(\d+)-(\d+)$/.exec(String(text || ""));
  if (!m) return [];
  const a = Math.min(Number(m[1]), numLayers - 1);
  const b = Math.min(Number(m[2]), numLayers - 1);
  if (a > b || (a === 0 && b === numLayers - 1)) return [];
  return Array.from({ length: b - a + 1 }, (_, i) => a + i);
}

// The shading of a value of `hi` at most: the views' sequential map (white to deep blue, √ scale).
function shadeOf(v, hi, dark) {
  const t = hi > 0 ? Math.max(0, v) / hi : 0;
  const [r, g, b] = heat(t, dark);
  return { background: `rgb(${r},${g},${b})`, light: Math.sqrt(t) > (dark ? 2 : 0.55) };
}

export function mount(root, app) {
  root.innerHTML = `
    <div class="controls">
      <label>Shade by <select class="shade">${Object.entries(QUANTITIES).map(([v, q]) => `<option value="${v}">${escapeHtml(q.label)}</option>`).join("")}</select></label>
      <label title="the layers the quantity reads (rollout: rolls through them)">Layers <select class="layer-from"></select> – <select class="layer-to"></select></label>
      <label>Head <select class="head"></select></label>
      <label class="kind-label" hidden>Attention <select class="kind"></select></label>
      <label title="a passage is a window of this many consecutive tokens, or one of the text's sentences">Passages <select class="passage">${PASSAGE_SIZES.map((n) => `<option value="${n}">${n} tokens</option>`).join("")}<option value="${SENTENCES}">sentences</option></select></label>
      <span class="selection"></span>
    </div>
    <div class="text-body">
      <div class="text-scroller" tabindex="0" aria-label="the text, shaded"><div class="text-spacer"></div><div class="text-lines"></div></div>
      <aside class="text-side">
        <canvas class="text-legend"></canvas>
        <p class="definition"></p>
        <p class="text-note muted"></p>
        <p class="reading" hidden><button type="button" class="read" title="select the generated tokens and shade the text by the attention they gave">Read: what the answer attended to</button></p>
        <h3>Top passages</h3>
        <ol class="passages"></ol>
        <section class="focus" hidden>
          <h3 title="${escapeHtml(FOCUS_DEFINITION)}">Query focus</h3>
          <p class="focus-note muted"></p>
          <canvas class="focus-map" title="click a head to shade the text by its layer and head"></canvas>
          <ol class="focus-heads"></ol>
        </section>
      </aside>
    </div>
    <div class="tooltip text-tip" hidden></div>`;
  const $ = (sel) => root.querySelector(sel);
  const scroller = $(".text-scroller");
  const linesEl = $(".text-lines");
  const tip = $(".text-tip");
  const measure = measurer(FONT);
  let doc = null; // { key, k, pieces, layout, width }: the text laid out
  let shade = null; // { key, values, hi, passages, index, unit, top, excluded: Set, quantity }
  let focus = null; // { key, question, contexts, layers, heads, values, mean, top }: the selection's query focus
  let highlight = null; // the passage jumped to: { start, stop }
  let drawnFor = ""; // what the lines in the page show (skip rebuilding them when unchanged)
  let hover = null; // { index, x, y }

  const s = () => app.state;
  $(".shade").addEventListener("change", (e) => app.update({ shade: e.target.value }));
  $(".head").addEventListener("change", (e) => app.update({ head: Number(e.target.value) }));
  $(".kind").addEventListener("change", (e) => app.update({ kind: e.target.value }));
  $(".passage").addEventListener("change", (e) => app.update({ passage: e.target.value === SENTENCES ? SENTENCES : Number(e.target.value) }));
  $(".focus-map").addEventListener("click", (event) => {
    const hit = focusCell(event);
    if (hit) app.update({ layers: `${hit.layer}-${hit.layer}`, head: hit.head });
  });
  $(".focus-map").addEventListener("mousemove", (event) => {
    const hit = focusCell(event);
    event.target.title = hit ? focusLine(hit.layer, hit.head) : "click a head to shade the text by its layer and head";
  });
  for (const cls of [".layer-from", ".layer-to"]) {
    $(cls).addEventListener("change", () => {
      const a = Number($(".layer-from").value);
      const b = Number($(".layer-to").value);
      app.update({ layers: `${Math.min(a, b)}-${Math.max(a, b)}` });
    });
  }

  function tokenAt(event) {
    const el = event.target.closest?.(".tok");
    return el ? Number(el.dataset.i) : -1;
  }
  linesEl.addEventListener("click", (event) => {
    const i = tokenAt(event);
    if (i < 0 || !doc) return;
    const chosen = selectionOf(s().sel, doc.k.keyLen);
    let next;
    if (event.shiftKey) next = chosen.includes(i) ? chosen.filter((j) => j !== i) : [...chosen, i];
    else next = chosen.length === 1 && chosen[0] === i ? [] : [i];
    app.update({ sel: next.sort((a, b) => a - b).join(",") });
  });
  linesEl.addEventListener("mousemove", (event) => {
    const i = tokenAt(event);
    hover = i < 0 ? null : { index: i, x: event.clientX, y: event.clientY };
    app.invalidate(showTip);
  });
  linesEl.addEventListener("mouseleave", () => {
    hover = null;
    app.invalidate(showTip);
  });
  scroller.addEventListener("scroll", () => app.invalidate(frame));
  $(".read").addEventListener("click", () => {
    if (doc?.promptLen) app.update({ sel: `${doc.promptLen}-${doc.k.keyLen - 1}`, shade: "from" });
  });
  $(".passages").addEventListener("click", (event) => {
    const item = event.target.closest("button[data-start]");
    if (item) jump(Number(item.dataset.start), Number(item.dataset.stop));
  });

  // Scroll the passage [start, stop) into view (its first line a third down) and outline it.
  function jump(start, stop) {
    if (!doc) return;
    highlight = { start, stop };
    const line = doc.layout.line[start];
    scroller.scrollTop = Math.max(0, line * LINE - scroller.clientHeight / 3);
    app.invalidate(frame);
  }

  function textWidth() {
    return Math.max(200, scroller.clientWidth - 2 * PAD - 4);
  }

  // Lay the text out again when the tokens or the width changed.
  function relayout(k, key) {
    const width = textWidth();
    if (doc?.key === key && doc.width === width) return;
    const pieces = doc?.key === key ? doc.pieces : piecesOf(k.keyTokens);
    doc = { key, k, pieces, width, layout: layoutLines(pieces, width, measure) };
    const height = doc.layout.lines * LINE + 2 * PAD;
    $(".text-spacer").style.height = `${height}px`;
    scroller.style.height = `${Math.min(Math.round(window.innerHeight * 0.7), 720, height + 2)}px`; // a short text: as tall as its lines
    drawnFor = "";
  }

  function visibleLines() {
    const top = Math.max(0, scroller.scrollTop - PAD);
    const first = Math.max(0, Math.floor(top / LINE) - OVERSCAN);
    const last = Math.min(doc.layout.lines, Math.ceil((top + scroller.clientHeight) / LINE) + OVERSCAN);
    return [first, last];
  }

  function tokenHtml(i, chosen, found, dark) {
    const p = doc.pieces[i];
    const v = shade ? shade.values[i] : 0;
    const classes = ["tok"];
    if (chosen.has(i)) classes.push("sel");
    if (highlight && i >= highlight.start && i < highlight.stop) classes.push("hl");
    if (shade?.excluded.has(i)) classes.push("sink");
    if (p.special) classes.push("special");
    if (doc.promptLen && i >= doc.promptLen) classes.push("gen");
    if (found.has(i)) classes.push("match");
    let style = "";
    if (shade) {
      const c = shadeOf(v, shade.hi, dark);
      style = ` style="background:${c.background}${c.light ? ";color:#fff" : ""}"`;
    }
    const value = shade ? ` data-v="${v}"` : "";
    return `<span class="${classes.join(" ")}" data-i="${i}"${value}${style}>${escapeHtml(p.text)}</span>`;
  }

  // One frame: the lines in view into the page (only when what they show changed).
  function frame() {
    if (!doc || root.hidden || root.offsetParent === null) return;
    const t0 = performance.now();
    relayout(doc.k, doc.key);
    const [first, last] = visibleLines();
    const st = s();
    const signature = `${first}/${last}/${shade?.key}/${st.sel}/${highlight?.start}/${st.search}/${st.theme}`;
    if (signature !== drawnFor) {
      drawnFor = signature;
      const chosen = new Set(selectionOf(st.sel, doc.k.keyLen));
      const found = new Set(matches(doc.k.keyTokens, st.search));
      const dark = st.theme === "dark";
      const { starts } = doc.layout;
      const html = [];
      for (let l = first; l < last; l++) {
        const parts = [];
        for (let i = starts[l]; i < starts[l + 1]; i++) {
          if (doc.pieces[i].space && i > starts[l]) parts.push(" ");
          parts.push(tokenHtml(i, chosen, found, dark));
        }
        html.push(`<div class="tline">${parts.join("")}</div>`);
      }
      linesEl.style.top = `${PAD + first * LINE}px`;
      linesEl.innerHTML = html.join("");
      const lastLine = Math.max(first, last - 1);
      // What is in the page (for tests and tools): lines [first, last), tokens [firstToken, lastToken].
      linesEl.dataset.drawn = JSON.stringify({ first, last, firstToken: starts[first], lastToken: starts[lastLine + 1] - 1, lines: doc.layout.lines });
    }
    showTip();
    const t = window.attnscopeTimings || {};
    const done = performance.now();
    // textDrawMs: this frame's work; textDrawnAt: when it ended (a scroll's latency is measured to it).
    window.attnscopeTimings = { ...t, textDrawMs: done - t0, textDrawnAt: done };
  }

  function showTip() {
    if (!hover || !doc) {
      tip.hidden = true;
      return;
    }
    const i = hover.index;
    const tokens = doc.k.keyTokens;
    let line = `${escapeHtml(tokens[i])} (${i})`;
    if (shade) {
      const passage = shade.passages[shade.index[i]];
      const unit = shade.unit === SENTENCES ? `sentence ${shade.index[i] + 1}` : "passage";
      line += `: <b>${formatValue(shade.values[i])}</b> · ${unit} ${passage.start}–${passage.stop - 1}: ${formatValue(passage.mass)}`;
      if (shade.excluded.has(i)) line += " · a sink, left out (rows renormalised)";
    }
    if (doc.promptLen && i >= doc.promptLen) line += " · generated";
    tip.innerHTML = line;
    tip.style.left = `${hover.x + 12}px`;
    tip.style.top = `${hover.y + 12}px`;
    tip.hidden = false;
  }

  function legend() {
    if (!shade) return null;
    const dark = s().theme === "dark";
    return { kind: "scale", label: shade.quantity.label, lo: 0, hi: shade.hi, color: (t) => `rgb(${heat(t * t, dark).join(",")})` };
  }

  function drawSide(k) {
    const st = s();
    const q = QUANTITIES[st.shade] || QUANTITIES.received;
    const canvas = $(".text-legend");
    const l = legend();
    canvas.hidden = !l;
    if (l) {
      const dpr = window.devicePixelRatio || 1;
      const width = 320;
      canvas.style.width = `${width}px`;
      canvas.style.height = "30px";
      canvas.width = Math.round(width * dpr);
      canvas.height = Math.round(30 * dpr);
      const ctx = canvas.getContext("2d");
      ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
      drawLegend(ctx, { ...l, label: "value" }, 0, 0, themeColor("--fg", "#222"));
      canvas.dataset.hi = String(l.hi);
    }
    const scope = `${describeLayers(st.layers, k)}, ${st.head >= 0 && st.head < k.numHeads ? `head ${st.head}` : "all heads"}`;
    const within = shade?.within ? `; reading the answer: only the prompt's passages (tokens 0–${shade.within - 1}) are ranked` : "";
    const unit = passageUnit(k);
    const passages = unit === SENTENCES ? `the text's ${k.sentences.length} sentences` : `windows of ${unit} tokens`;
    $(".definition").innerHTML = `<b>${escapeHtml(q.label)}</b> (${escapeHtml(scope)}): ${escapeHtml(q.definition)}. Passages: ${passages}${escapeHtml(within)}.`;
    $(".reading").hidden = !doc.promptLen;
    const chosen = selectionOf(st.sel, k.keyLen);
    $(".text-note").textContent = q.selection && !chosen.length ? "select tokens to shade by this: click a token, shift-click to add more" : "";
    const list = $(".passages");
    list.replaceChildren();
    if (!shade) return;
    for (const [rank, p] of shade.top.entries()) {
      const li = document.createElement("li");
      const words = doc.pieces.slice(p.start, Math.min(p.stop, p.start + 12)).map((x, j) => (x.space && j ? " " : "") + x.text).join("");
      const button = document.createElement("button");
      button.type = "button";
      button.className = "passage";
      button.dataset.start = String(p.start);
      button.dataset.stop = String(p.stop);
      button.dataset.rank = String(rank + 1);
      button.title = "scroll to this passage and outline it";
      const sentence = shade.unit === SENTENCES ? `sentence ${shade.index[p.start] + 1} · ` : "";
      button.innerHTML = `${rank + 1}. <b>${formatValue(p.mass)}</b> · ${sentence}tokens ${p.start}–${p.stop - 1} · <span class="muted">${escapeHtml(words)}${p.stop - p.start > 12 ? "…" : ""}</span>`;
      li.append(button);
      list.append(li);
    }
  }

  function drawSelection(k) {
    const chosen = selectionOf(s().sel, k.keyLen);
    const el = $(".selection");
    if (!chosen.length) {
      el.textContent = "no tokens selected";
      return;
    }
    const names = chosen.slice(0, 6).map((i) => `${escapeHtml(k.keyTokens[i])} (${i})`).join(", ");
    el.innerHTML = `selected: ${names}${chosen.length > 6 ? ` and ${chosen.length - 6} more` : ""} <button type="button" class="clear-selection">clear</button>`;
    el.querySelector(".clear-selection").addEventListener("click", () => app.update({ sel: "" }));
  }

  function drawControls(info, k) {
    const st = s();
    const layers = layersOf(st.layers, k.numLayers);
    const [a, b] = layers.length ? [layers[0], layers[layers.length - 1]] : [0, k.numLayers - 1];
    const options = (chosen) => [...Array(k.numLayers).keys()].map((l) => new Option(app.layerName(l, k.kind), l, false, l === chosen));
    $(".layer-from").replaceChildren(...options(a));
    $(".layer-to").replaceChildren(...options(b));
    $(".head").replaceChildren(new Option("all (mean)", -1, false, st.head < 0), ...[...Array(k.numHeads).keys()].map((h) => new Option(String(h), h, false, h === st.head)));
    $(".shade").value = QUANTITIES[st.shade] ? st.shade : "received";
    $(".passage").value = String(passageUnit(k));
    $(".passage").querySelector(`option[value="${SENTENCES}"]`).hidden = !k.sentences.length;
    const selfKinds = info.kinds.filter((x) => x.kind !== "cross");
    $(".kind-label").hidden = selfKinds.length < 2;
    $(".kind").replaceChildren(...selfKinds.map((x) => new Option(x.kind, x.kind, false, x.kind === k.kind)));
  }

  // The state's passage unit for `k`: a window size, or "sentences" where `k` has them.
  function passageUnit(k) {
    const asked = s().passage;
    if (asked === SENTENCES && k.sentences.length) return SENTENCES;
    return PASSAGE_SIZES.includes(asked) ? asked : 32;
  }

  function windowsOf(k, unit) {
    return unit === SENTENCES ? k.sentences : passagesOf(k.keyLen, unit);
  }

  // The query focus map: layers (rows) × heads (columns), each head's mass from the question on the
  // context sentence read most (focus.top); the cell size fits FOCUS_WIDTH.
  function focusGeometry() {
    const cell = Math.max(6, Math.min(24, Math.floor(FOCUS_WIDTH / Math.max(focus.heads, focus.layers))));
    return { cell, left: 26, top: 16 };
  }

  function focusValue(layer, head, c = focus.top) {
    return focus.values[(layer * focus.heads + head) * focus.contexts.length + c];
  }

  function focusCell(event) {
    if (!focus) return null;
    const g = focusGeometry();
    const rect = event.target.getBoundingClientRect();
    const head = Math.floor((event.clientX - rect.left - g.left) / g.cell);
    const layer = Math.floor((event.clientY - rect.top - g.top) / g.cell);
    return head >= 0 && head < focus.heads && layer >= 0 && layer < focus.layers ? { layer, head } : null;
  }

  // A head's readout: its mass on the question's top sentence, and the sentence it reads most itself.
  function focusLine(layer, head) {
    let own = 0;
    for (let c = 1; c < focus.contexts.length; c++) if (focusValue(layer, head, c) > focusValue(layer, head, own)) own = c;
    const name = (c) => `sentence ${c + 1} (tokens ${focus.contexts[c][0]}–${focus.contexts[c][1] - 1})`;
    const mine = own === focus.top ? "its own top too" : `its own top: ${name(own)} ${formatValue(focusValue(layer, head, own))}`;
    return `layer ${app.layerName(layer, doc.k.kind)}, head ${app.headName(head)}: ${formatValue(focusValue(layer, head))} on ${name(focus.top)}; ${mine}`;
  }

  function drawFocus(k) {
    const section = $(".focus");
    section.hidden = !focus;
    if (!focus) return;
    const [qa, qb] = focus.question;
    const [ta, tb] = focus.contexts[focus.top];
    let hi = 0;
    for (let l = 0; l < focus.layers; l++) for (let h = 0; h < focus.heads; h++) hi = Math.max(hi, focusValue(l, h));
    $(".focus-note").textContent = `the question: tokens ${qa}–${qb - 1}; the context: the ${focus.contexts.length} sentences before it. Read most: sentence ${focus.top + 1} (tokens ${ta}–${tb - 1}), ${formatValue(focus.mean[focus.top])} of the question's attention on average. Each cell: that head's mass on it (darkest: ${formatValue(hi)}).`;
    const g = focusGeometry();
    const width = g.left + focus.heads * g.cell + 2;
    const height = g.top + focus.layers * g.cell + 2;
    const canvas = $(".focus-map");
    const ctx = sizeCanvas(canvas, width, height);
    const dark = s().theme === "dark";
    const fg = themeColor("--fg", "#222");
    ctx.font = "10px system-ui, sans-serif";
    ctx.fillStyle = fg;
    ctx.textAlign = "center";
    ctx.textBaseline = "middle";
    const every = Math.ceil(14 / g.cell); // label every head and layer the cells leave room for
    for (let h = 0; h < focus.heads; h += every) ctx.fillText(app.headName(h), g.left + (h + 0.5) * g.cell, g.top / 2);
    ctx.textAlign = "right";
    for (let l = 0; l < focus.layers; l += every) ctx.fillText(app.layerName(l, k.kind), g.left - 4, g.top + (l + 0.5) * g.cell);
    for (let l = 0; l < focus.layers; l++) {
      for (let h = 0; h < focus.heads; h++) {
        const [r, gr, b] = heat(hi > 0 ? Math.max(0, focusValue(l, h)) / hi : 0, dark);
        ctx.fillStyle = `rgb(${r},${gr},${b})`;
        ctx.fillRect(g.left + h * g.cell, g.top + l * g.cell, g.cell - 1, g.cell - 1);
      }
    }
    canvas.dataset.geometry = JSON.stringify({ ...g, layers: focus.layers, heads: focus.heads }); // for tests and tools
    // The heads that read the top sentence most, named.
    const ranked = [];
    for (let l = 0; l < focus.layers; l++) for (let h = 0; h < focus.heads; h++) ranked.push([focusValue(l, h), l, h]);
    ranked.sort((x, y) => y[0] - x[0]);
    $(".focus-heads").innerHTML = ranked.slice(0, 3).map(([v, l, h]) =>
      `<li data-layer="${l}" data-head="${h}">layer ${escapeHtml(app.layerName(l, k.kind))}, head ${escapeHtml(app.headName(h))}: <b>${formatValue(v)}</b></li>`).join("");
  }

  // The self-attention kind the state names (cross attention has two texts: not this view's).
  function kindOf(info) {
    const k = info.kind(s().kind);
    return k.kind === "cross" ? info.kinds.find((x) => x.kind !== "cross") || k : k;
  }

  async function render(info, fresh) {
    const st = s();
    const k = kindOf(info);
    const docKey = `${info.traceId}/${k.kind}`;
    const unit = passageUnit(k);
    const selected = selectionOf(st.sel, k.keyLen);
    const promptLen = info.generatedFrom(k.kind);
    const o = {
      selected,
      // Generated tokens selected (reading an answer): rank the prompt's passages only.
      within: promptLen && selected.length && selected[0] >= promptLen ? promptLen : 0,
      layers: layersOf(st.layers, k.numLayers),
      heads: st.head >= 0 && st.head < k.numHeads ? [st.head] : [],
      unit,
    };
    const quantity = QUANTITIES[st.shade] ? st.shade : "received";
    const shadeKey = JSON.stringify([info.traceId, info.variant || "", k.kind, quantity, o]);
    if (doc?.key !== docKey) highlight = null;
    if (shade?.key !== shadeKey) {
      const loaded = await app.busy(loadShade(info.traceId, quantity, k, { ...o, windows: windowsOf(k, unit) }));
      if (!fresh()) return;
      if (loaded) {
        let hi = 0;
        for (const v of loaded.values) hi = Math.max(hi, v);
        shade = { key: shadeKey, ...loaded, hi, unit, index: passageIndex(windowsOf(k, unit), k.keyLen), within: o.within, quantity: QUANTITIES[quantity], excluded: new Set(loaded.excluded), top: topPassages(loaded.ranked, TOP_PASSAGES) };
      } else shade = null;
    }
    const spans = app.analysis() ? focusSpans(selected, k.sentences) : null;
    const focusKey = spans && JSON.stringify([info.traceId, info.variant || "", k.kind, spans]);
    if (focus?.key !== focusKey) {
      // A server that cannot answer QueryFocusView leaves the panel out, not the text view.
      const loaded = spans ? await app.busy(loadFocus(info.traceId, k, spans).catch(() => null)) : null;
      if (!fresh()) return;
      focus = loaded && { key: focusKey, ...loaded };
    }
    if (doc?.key !== docKey) doc = null;
    relayout(k, docKey);
    doc.promptLen = promptLen;
    drawControls(info, k);
    drawSelection(k);
    drawSide(k);
    drawFocus(k);
    drawnFor = "";
    frame();
    const t = window.attnscopeTimings || {};
    window.attnscopeTimings = { ...t, textReadyMs: t.textReadyMs ?? performance.now() };
  }

  // The lines in view as a picture (backgrounds and text), for the PNG and SVG exports.
  function exportPicture(scale, background) {
    if (!doc) return null;
    const [first, last] = visibleLines();
    const width = textWidth() + 2 * PAD;
    const height = (last - first) * LINE + 2 * PAD;
    const dark = s().theme === "dark";
    const fg = themeColor("--fg", "#222");
    return picture(width, height, scale, (ctx) => {
      ctx.fillStyle = background || themeColor("--bg", "#fff");
      ctx.fillRect(0, 0, width, height);
      ctx.font = FONT;
      ctx.textBaseline = "middle";
      const { starts } = doc.layout;
      for (let l = first; l < last; l++) {
        let x = PAD;
        const y = PAD + (l - first) * LINE;
        for (let i = starts[l]; i < starts[l + 1]; i++) {
          const p = doc.pieces[i];
          if (p.space && i > starts[l]) x += measure(" ");
          const w = measure(p.text);
          const c = shade ? shadeOf(shade.values[i], shade.hi, dark) : null;
          if (c) {
            ctx.fillStyle = c.background;
            ctx.fillRect(x, y + 2, w, LINE - 4);
          }
          ctx.fillStyle = c?.light ? "#fff" : fg;
          ctx.fillText(p.text, x, y + LINE / 2);
          x += w;
        }
      }
    });
  }

  return {
    render,
    exportPicture,
    exportTitle: () => doc && `text view · ${shade ? shade.quantity.label : "no shading"} · ${describeLayers(s().layers, doc.k)}`,
    exportLegend: legend,
    exportJson: () => doc && {
      kind: doc.k.kind, tokens: doc.k.keyTokens, quantity: shade ? s().shade : null, definition: shade?.quantity.definition,
      selected: selectionOf(s().sel, doc.k.keyLen), values: shade ? [...shade.values] : null,
      passageUnit: passageUnit(doc.k),
      passages: shade ? shade.passages.map((p) => ({ ...p })) : windowsOf(doc.k, passageUnit(doc.k)).map(([start, stop]) => ({ start, stop })),
      excluded: shade ? [...shade.excluded] : [],
      ...(focus ? { queryFocus: { question: focus.question, contexts: focus.contexts, top: focus.top, layers: focus.layers, heads: focus.heads, values: [...focus.values] } } : {}),
    },
  };
}

function describeLayers(text, k) {
  const layers = layersOf(text, k.numLayers);
  if (!layers.length) return `all ${k.numLayers} layers`;
  return layers.length === 1 ? `layer ${layers[0]}` : `layers ${layers[0]}–${layers[layers.length - 1]}`;
}
