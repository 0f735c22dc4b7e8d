// The module loader of standalone files (a classic script, inlined by
// attnscope.service.exports.standalone): file:// pages cannot import module files, so the viewer's
// modules, embedded as text in #attnscope-modules, are loaded as blob URLs, each module's relative
// imports rewritten to its dependencies' URLs first. embedded.js (the transport that answers from
// the file's data) starts before main.js.
(() => {
  const sources = JSON.parse(document.getElementById("attnscope-modules").textContent);
  const urls = {};
  const resolve = (from, spec) => {
    const parts = from.split("/").slice(0, -1);
    for (const p of spec.split("/")) {
      if (p === "..") parts.pop();
      else if (p !== ".") parts.push(p);
    }
    return parts.join("/");
  };
  const load = (name) => {
    if (urls[name]) return urls[name];
    if (!(name in sources)) throw new Error(`no embedded module ${name}`);
    const code = sources[name].replace(/(from\s+|import\s+)"(\.\.?\/[^"]+)"/g,
      (match, lead, spec) => `${lead}"${load(resolve(name, spec))}"`);
    urls[name] = URL.createObjectURL(new Blob([code], { type: "text/javascript" }));
    return urls[name];
  };
  import(load("embedded.js")).then(() => import(load("main.js"))).catch((err) => {
    const box = document.getElementById("error");
    box.textContent = `the embedded viewer failed to start: ${err}`;
    box.hidden = false;
  });
})();
