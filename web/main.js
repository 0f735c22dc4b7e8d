// Wiring: the run form, the model list, and the first views (tokens, head statistics).
import { extract, listModels } from "./data.js";

const $ = (id) => document.getElementById(id);

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
}

function drawStats(info, tensors) {
  const names = Object.keys(tensors).filter((n) => n.startsWith("head_stats/"));
  const rows = [`<tr><th>layer.head</th>${names.map((n) => `<th>${n.slice(11)}</th>`).join("")}</tr>`];
  for (let l = 0; l < info.numLayers; l++) {
    for (let h = 0; h < info.numHeads; h++) {
      const cells = names.map((n) => `<td>${tensors[n].data[l * info.numHeads + h].toFixed(3)}</td>`);
      rows.push(`<tr><th>L${l}.H${h}</th>${cells.join("")}</tr>`);
    }
  }
  $("stats").innerHTML = rows.join("");
}

async function run(event) {
  event?.preventDefault();
  $("status").textContent = "running…";
  showError("");
  try {
    const { info, tensors } = await extract($("model").value, $("text").value);
    $("tokens").replaceChildren(...info.tokens.map((t) => Object.assign(document.createElement("span"), { textContent: t })));
    drawStats(info, tensors);
    $("status").textContent = `${info.seqLen} tokens, ${info.numLayers} × ${info.numHeads} heads`;
  } catch (err) {
    showError(String(err.message || err));
    $("status").textContent = "";
  }
}

async function init() {
  try {
    const models = await listModels();
    $("model").replaceChildren(...models.map((m) => Object.assign(document.createElement("option"), { value: m.name, textContent: m.name })));
  } catch (err) {
    showError(String(err.message || err));
  }
  $("run-form").addEventListener("submit", run);
}

init();
