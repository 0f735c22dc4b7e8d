// The text view's running text: tokens written as words (subword markers read as the tokenizer
// meant them) and laid out in lines of a given width, so that the view can put only the lines in
// view into the page. Pure functions: no DOM, the width of a string comes from `measure`.

const SPACE_MARKERS = /^(Ġ|▁)/; // byte-level BPE (GPT-2, Llama 3) and SentencePiece: a space before
const NEWLINE = "Ċ"; // byte-level BPE's "\n"
const SPECIAL = /^(\[[A-Z]+\]|<\/?[a-z|_]*>|<\|[^|]*\|>)$/; // [CLS], <s>, </s>, <|endoftext|>

// Each token as { text, space (a space before it), special, newline (a line break after it) }.
// WordPiece (BERT: "##" continues a word) and word-level tokenizers have no space markers: a
// space goes before every token but a "##" piece. Tokenizers that mark spaces (Ġ, ▁) get a space
// only where a token carries the marker.
export function piecesOf(tokens) {
  const marked = tokens.some((t) => SPACE_MARKERS.test(t) || t.includes(NEWLINE));
  return tokens.map((raw, i) => {
    const t = String(raw);
    const special = SPECIAL.test(t);
    let text = t;
    let space;
    if (marked) {
      space = SPACE_MARKERS.test(t) || special;
      text = t.replace(SPACE_MARKERS, "");
    } else {
      space = !t.startsWith("##");
      text = t.replace(/^##/, "");
    }
    const newline = text.includes(NEWLINE);
    text = text.replaceAll(NEWLINE, newline && text.replaceAll(NEWLINE, "") === "" ? "↵" : "");
    return { text: text || " ", space: space && i > 0, special, newline };
  });
}

// Lines of at most `width` pixels: { lines, starts: Int32Array (the first token of each line,
// then the token count), line: Int32Array (each token's line) }. A token wider than a line takes
// a line of its own; a line's first token is written without its space.
export function layoutLines(pieces, width, measure) {
  const n = pieces.length;
  const line = new Int32Array(n);
  const starts = [0];
  const space = measure(" ");
  let at = 0;
  let breakNext = false;
  for (let i = 0; i < n; i++) {
    const p = pieces[i];
    const w = measure(p.text);
    if (at > 0 && (breakNext || at + (p.space ? space : 0) + w > width)) {
      starts.push(i);
      at = 0;
    }
    at += (p.space && at > 0 ? space : 0) + w;
    line[i] = starts.length - 1;
    breakNext = p.newline;
  }
  starts.push(n);
  return { starts: Int32Array.from(starts), line, lines: starts.length - 1 };
}

// `measure(text)` of a canvas font, each distinct string measured once (a long text repeats its
// tokens: 100k tokens take a few thousand measurements).
export function measurer(font) {
  const ctx = document.createElement("canvas").getContext("2d");
  ctx.font = font;
  const widths = new Map();
  return (text) => {
    let w = widths.get(text);
    if (w === undefined) {
      w = ctx.measureText(text).width;
      widths.set(text, w);
    }
    return w;
  };
}
