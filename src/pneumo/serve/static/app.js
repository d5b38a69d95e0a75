// Pneumo's page: upload X-rays, show each result in its own card. No framework, no build step, no other hosts.
// A card leads with one line a clinician can act on (finding, probability and what it is calibrated on, cut-off),
// then the image with its heat map, then details on demand; the model's figures wait in "Model performance".
"use strict";

// Relative URLs, so the page also works when the app is mounted under a path prefix.
const API_PREDICT = "api/v1/predict";
const API_MODEL = "api/v1/model";
const PARALLEL_UPLOADS = 2; // the server shares its CPUs with everyone else: no point flooding it

const $ = (sel, root = document) => root.querySelector(sel);
const isNumber = (x) => typeof x === "number" && Number.isFinite(x);
const pct = (p) => `${(p * 100).toFixed(1)}%`;
const pct0 = (p) => `${Math.round(p * 100)}%`;
const figure = (p) => (isNumber(p) ? pct(p) : "not recorded");
const auc = (x) => (isNumber(x) ? x.toFixed(3) : "not recorded");

let model = null;
const queue = [];
let running = 0;

// A DOM element from a tag, attributes and children (strings become text nodes: nothing is parsed as markup).
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else node.setAttribute(k, v);
  }
  node.append(...children.filter((c) => c !== null && c !== undefined));
  return node;
}

// --- what the probabilities are calibrated on (the server's `calibration`, from the model file) ---

// {on, words}: `on` names the sample in a few words, `words` is the clause the lead line carries. Without the
// sample's share of pneumonia in the model file nothing is computed: "calibrated on the validation sample".
function calibration() {
  const c = (model || {}).calibration || {};
  const site = Boolean((model || {}).site);
  if (!isNumber(c.prevalence)) {
    const on = site ? "this site's sample" : "the validation sample";
    return { on, words: `calibrated on ${on}`, prevalence: null };
  }
  const on = site ? "this site's sample" : "validation X-rays";
  return {
    on,
    words: `calibrated on ${on} with ${pct0(c.prevalence)} pneumonia: lower for a patient at lower risk`,
    prevalence: c.prevalence,
  };
}

// The image's likelihood ratio: its odds of pneumonia over the calibration sample's. Valid for any pre-test
// probability as long as the images look like the sample's (prior shift); shown in the details only.
function likelihoodRatio(p, prevalence) {
  const odds = (x) => x / (1 - x);
  const clamped = Math.min(Math.max(p, 0.001), 0.999);
  const lr = odds(clamped) / odds(prevalence);
  const text = lr >= 10 ? String(Math.round(lr)) : lr.toPrecision(2);
  return { text: clamped === p ? text : `${p > 0.5 ? "at least" : "at most"} ${text}`, lr };
}

// --- the model card: header line, subtype caveat, "Model performance" ---

async function loadModelInfo() {
  try {
    const res = await fetch(API_MODEL);
    if (!res.ok) throw new Error(`HTTP ${res.status}`);
    model = await res.json();
  } catch (err) {
    $("#model-name").textContent = "model unavailable";
    $("#performance-body").replaceChildren(el("p", {}, "The model card could not be read from the server."));
    return;
  }
  $("#model-name").textContent = `${model.name} v${model.version}`;
  if (model.site) {
    $("#model-site").textContent = `site calibration: ${model.site.name}`;
    $("#model-site").hidden = false;
  }
  $("#footer-version").textContent = `Pneumo ${model.pneumo_version} · model ${model.name} v${model.version}`;
  if (model.max_upload_mb) $("#upload-limit").textContent = `, up to ${model.max_upload_mb} MB each`;
  $("#performance-body").replaceChildren(...performanceSections(model));
  // Cards that finished before the model card arrived say what their probability is calibrated on now.
  for (const card of document.querySelectorAll('#results > [data-state="done"]')) showCalibration(card);
}

// The checks of the model file (pneumo.evaluation.shifts), in a clinician's words. Unknown names are shown as recorded.
const CONDITIONS = {
  clean: "as they are",
  "zoom 0.8": "zoomed out to 0.8, dark margin",
  "zoom 0.8 (margin)": "zoomed out to 0.8, dark margin",
  "zoom 1.25": "zoomed in 1.25×, edges cropped",
  "zoom 1.25 (cropped)": "zoomed in 1.25×, edges cropped",
  "squeeze across 15%": "squeezed 15% sideways",
  "squeeze down 15%": "squeezed 15% vertically",
  "border masked 15%": "outer 15% hidden",
};
const condition = (name) => CONDITIONS[name] || name;

// A group of figures and the sentence saying what they were measured on (the browser tests check that every
// figure on the page sits in such a group, with that sentence visible).
function measuredGroup(title, on, sentence, ...content) {
  return el("section", { class: "figures", "data-measured-on": on },
    el("h3", {}, title), el("p", { class: "measured-on" }, sentence), ...content);
}

function sampleWords(v) {
  const counts = Number.isInteger(v.n) && Number.isInteger(v.n_pos) ? ` (${v.n} X-rays, ${v.n_pos} with pneumonia)` : "";
  return `${v.measured_on || "validation"}${counts}`;
}

function performanceSections(m) {
  const v = m.validation || {};
  const sections = [];
  if (m.site) sections.push(siteSection(m.site));
  const shipped = m.site ? " as shipped, before the site calibration" : "";
  const cutoff = isNumber(v.threshold) ? v.threshold : m.threshold;
  const on = v.measured_on || "validation";
  sections.push(conditionsSection(v, on, `${sampleWords(v)}, at the cut-off of ${pct(cutoff)}${shipped}`));
  const rule = ruleSection(v.operating_point, on);
  if (rule) sections.push(rule);
  const subtypes = subtypeWords(v);
  if (subtypes) {
    sections.push(measuredGroup("Bacterial or viral (indicative only)", on, `Measured on ${sampleWords(v)}.`,
      el("p", {}, subtypes)));
  }
  sections.push(el("p", { class: "muted" }, "Expect lower figures on X-rays from other sites or periods."));
  return sections;
}

// The figures on the validation X-rays and on the same X-rays re-framed: one table, one row per condition.
function conditionsSection(v, on, sentence) {
  const shift = v.geometry_shift || {};
  const rows = [{ name: "clean", sensitivity: v.sensitivity, specificity: v.specificity, roc_auc: v.roc_auc }];
  for (const [name, f] of Object.entries(shift)) if (name !== "worst") rows.push({ name, ...f });
  const body = rows.map((r) =>
    el("tr", {}, el("th", { scope: "row" }, condition(r.name)),
      el("td", {}, figure(r.sensitivity)), el("td", {}, figure(r.specificity)), el("td", {}, auc(r.roc_auc))));
  const table = el("table", { class: "figures-table", "data-testid": "conditions" },
    el("thead", {}, el("tr", {}, el("th", { scope: "col" }, "The X-rays…"),
      el("th", { scope: "col" }, "Pneumonias found (sensitivity)"),
      el("th", { scope: "col" }, "Normals cleared (specificity)"),
      el("th", { scope: "col" }, "ROC AUC"))),
    el("tbody", {}, ...body));
  const worst = worstCase(rows.slice(1));
  const reframed = rows.length > 1
    ? " The other rows are the same X-rays re-framed (as with other collimation or positioning) or with their " +
      "border hidden (a model that reads the lungs, not labels at the edge, keeps its figures)."
    : "";
  return measuredGroup("How often it is right", on, `Measured on ${sentence}.${reframed}`,
    el("div", { class: "table-scroll" }, table), worst ? el("p", { "data-testid": "worst-case" }, worst) : null);
}

// "At worst it found 87.9% of pneumonias (outer 15% hidden under grey) and cleared 88.1% of normals (zoomed …)".
function worstCase(rows) {
  const lowest = (key) => rows.filter((r) => isNumber(r[key])).sort((a, b) => a[key] - b[key])[0];
  const s = lowest("sensitivity");
  const c = lowest("specificity");
  if (!s || !c) return null;
  return `At worst, re-framed, it found ${pct(s.sensitivity)} of pneumonias (${condition(s.name)}) and cleared ` +
    `${pct(c.specificity)} of normals (${condition(c.name)}).`;
}

// How the cut-off was chosen, and what the rule not in force would have given; nothing for model files made
// before both rules were recorded.
function ruleSection(op, on) {
  if (!op || !op.rules || !op.rules[op.rule]) return null;
  const rule = op.rules[op.rule];
  const pooled = rule.pooled || {};
  if (!isNumber(rule.threshold) || !isNumber(pooled.sensitivity) || !isNumber(pooled.specificity)) return null;
  const targets = isNumber(op.target_sensitivity) && isNumber(op.target_specificity)
    ? ` to finding ${pct0(op.target_sensitivity)} of pneumonias and clearing ${pct0(op.target_specificity)} of normals`
    : "";
  const how = op.rule === "worst_case"
    ? `keeps the largest margin${targets} in the worst re-framing`
    : `is the highest that finds ${isNumber(op.target_sensitivity) ? pct0(op.target_sensitivity) : "the target share"} ` +
      "of pneumonias on these X-rays";
  const lines = [el("p", { "data-testid": "cutoff-rule" }, `The cut-off of ${pct(rule.threshold)} ${how}: it finds ` +
    `${pct(pooled.sensitivity)} of pneumonias and clears ${pct(pooled.specificity)} of normals here.`)];
  for (const [name, other] of Object.entries(op.rules)) {
    const p = (other || {}).pooled || {};
    if (name === op.rule || !isNumber(other.threshold) || !isNumber(p.sensitivity) || !isNumber(p.specificity)) continue;
    lines.push(el("p", { class: "muted", "data-testid": "cutoff-other" }, `Not used: a cut-off of ` +
      `${pct(other.threshold)} would find ${pct(p.sensitivity)} and clear ${pct(p.specificity)} of the same X-rays.`));
  }
  return measuredGroup("How the cut-off was chosen", on,
    `Measured on ${on}, pooled with the same X-rays re-framed as in the table above.`, ...lines);
}

// A site calibration (pneumo adapt) replaces the shipped calibration and cut-off: its cross-validated figures.
function siteSection(site) {
  const cv = site.cross_validated || {};
  const when = String(site.created || "").slice(0, 10);
  const iv = (x) => (x && isNumber(x.value) ? `${pct(x.value)} (95% CI ${pct(x.lo)}–${pct(x.hi)})` : "not recorded");
  const s = site.sample || {};
  const band = site.refer ? el("p", {}, `REFER band: ${pct(site.refer.low)}–${pct(site.refer.high)}; ` +
    `referred ${iv(cv.referred)}.`) : null;
  const small = (site.warnings || []).some((w) => w.startsWith("SITE SAMPLE TOO SMALL"))
    ? el("p", { class: "warn-text" }, "The site sample is too small for firm figures.") : null;
  return measuredGroup(`At this site: ${site.name}`, "this site's sample",
    `Measured on this site's sample (${when}, ${s.n} X-rays, ${s.n_pneumonia} with pneumonia), cross-validated ` +
    `by patient in ${cv.folds} folds; the calibration and cut-off in force were fitted there.`,
    el("p", {}, `Pneumonias found (sensitivity) ${iv(cv.sensitivity)}; normals cleared (specificity) ` +
      `${iv(cv.specificity)}.`), band, small);
}

// The bacterial / viral caveat, said once per page: how often the split was right, and under re-framing.
function subtypeWords(v, short = false) {
  if (!isNumber(v.bacterial_vs_viral_accuracy)) return null;
  const worst = (v.geometry_shift || {}).worst || {};
  const flipped = short ? "" : `, with up to ${figure(worst.subtype_flipped)} of the calls changed`;
  const shifted = isNumber(worst.bacterial_vs_viral) ? `; re-framed, ${pct(worst.bacterial_vs_viral)} at worst${flipped}` : "";
  return `It was right for ${pct(v.bacterial_vs_viral_accuracy)} of pneumonia X-rays in ` +
    `${v.measured_on || "validation"} (X-rays of the training period)${shifted}; not validated on later X-rays.`;
}

function showSubtypeCaveat() {
  const box = $("#subtype-caveat");
  if (!box.hidden) return;
  const v = (model || {}).validation || {};
  const words = subtypeWords(v, true);
  box.dataset.measuredOn = v.measured_on || "validation";
  box.replaceChildren(el("strong", {}, "Bacterial / viral is indicative only. "),
    words || "How often it is right is not recorded in this model file.");
  box.hidden = false;
}

// --- result cards ---

function newCard(file) {
  const card = $("#card-template").content.firstElementChild.cloneNode(true);
  $(".file-name", card).textContent = file.name;
  card.dataset.filename = file.name;
  return card;
}

function showError(card, message) {
  card.dataset.state = "error";
  $(".status", card).textContent = "Not analysed";
  const box = $(".card-error", card);
  box.textContent = message;
  box.hidden = false;
}

// The map is laid over the X-ray as the server made it: its colours are on the server's scale, never rescaled here.
function showHeatmap(card, result) {
  const overlay = $(".heatmap-img", card);
  const toggle = $(".heatmap-toggle", card);
  const note = $(".heatmap-note", card);
  if (result.heatmap) {
    overlay.src = `data:image/png;base64,${result.heatmap}`;
    overlay.alt = `Heat map over ${result.filename}: warmer colours pushed the model towards pneumonia`;
    overlay.hidden = false;
    toggle.hidden = false;
    $("input", toggle).addEventListener("change", (e) => {
      overlay.hidden = !e.target.checked;
    });
    note.textContent = result.heatmap_note
      ? `Heat map: ${result.heatmap_note}.`
      : "Warm: pushed towards pneumonia; one scale for every image (not a lesion outline).";
    if (result.heatmap_field) note.textContent += ` The ${result.heatmap_field}.`;
  } else if (result.explain_error) {
    note.textContent = `No heat map: ${result.explain_error}`;
  }
}

// The domain guard's answer: "typical", "unusual_acquisition" (the result stands, with a note) or "not_pediatric"
// (greyed out). Servers without the `domain` field answer with `in_domain` only.
const DOMAINS = ["typical", "unusual_acquisition", "not_pediatric"];
function domainOf(r) {
  if (DOMAINS.includes(r.domain)) return r.domain;
  if (r.in_domain === false) return "not_pediatric";
  if (r.in_domain === true) return "typical";
  return null;
}

function showDomain(card, r) {
  const domain = domainOf(r);
  const line = $(".domain-line", card);
  card.dataset.domain = domain || "unknown";
  if (r.in_domain === true || r.in_domain === false) card.dataset.inDomain = String(r.in_domain);
  if (domain === "not_pediatric") {
    $(".ood-warning", card).hidden = false;
    card.classList.add("is-ood");
    line.textContent = "Domain check: not like a pediatric chest X-ray; the result is greyed out.";
  } else if (domain === "unusual_acquisition") {
    $(".unusual-note", card).hidden = false;
    card.classList.add("is-unusual");
    line.textContent = "Domain check: a pediatric chest X-ray, acquired unlike the validation X-rays.";
  } else if (domain === "typical") {
    line.textContent = "Domain check: passed (the image resembles the validation X-rays).";
  } else {
    line.textContent = "Domain check: not available for this model.";
  }
}

// The clause the lead line carries about calibration, and the likelihood ratio in the details.
function showCalibration(card) {
  const c = calibration();
  const p = Number(card.dataset.probability);
  card.dataset.measuredOn = c.on;
  $(".calibrated", card).textContent = `(${c.words})`;
  const lr = $(".odds-text", card);
  if (!(c.prevalence > 0 && c.prevalence < 1) || !isNumber(p) || card.dataset.prediction === "REFER") {
    lr.hidden = true;
    return;
  }
  const { text, lr: value } = likelihoodRatio(p, c.prevalence);
  lr.textContent = `Likelihood ratio of this image: ${text} (its odds of pneumonia over those of the ` +
    `calibration sample, ${pct0(c.prevalence)} pneumonia; it ${value < 1 ? "lowers" : "raises"} the odds). ` +
    `Your patient's post-test odds = pre-test odds × ${text}.`;
  lr.hidden = false;
}

function showResult(card, r) {
  const pneumonia = r.prediction === "PNEUMONIA";
  const refer = r.prediction === "REFER";
  const kind = refer ? "refer" : pneumonia ? "pneumonia" : "normal";
  card.dataset.state = "done";
  card.dataset.prediction = r.prediction;
  card.dataset.probability = String(r.probability);
  card.classList.add(`is-${kind}`);
  $(".status", card).textContent = "";

  const decision = $(".decision", card);
  decision.textContent = r.prediction;
  decision.classList.add(kind);
  $(".probability", card).textContent = pct(r.probability);
  const hasBand = isNumber(r.refer_low) && isNumber(r.refer_high);
  const range = hasBand ? `${pct(r.refer_low)}–${pct(r.refer_high)}` : "";
  $(".cutoff-words", card).textContent = refer
    ? `inside this site's REFER band ${range}`
    : `${pneumonia ? "at or above" : "below"} the cut-off of ${pct(r.threshold)}`;
  $(".lead", card).hidden = false;
  $(".refer-note", card).hidden = !refer;

  const img = $(".xray-img", card);
  img.src = `data:image/png;base64,${r.image}`;
  img.alt = `Chest X-ray ${r.filename} as read by the model`;
  showHeatmap(card, r);
  showDetails(card, r, { pneumonia, refer, hasBand, range });
  showDomain(card, r);
  showCalibration(card);
  $(".card-body", card).hidden = false;
}

function showDetails(card, r, { pneumonia, refer, hasBand, range }) {
  const bar = $(".bar", card);
  bar.setAttribute("aria-valuenow", (r.probability * 100).toFixed(1));
  bar.setAttribute("aria-label", `Probability of pneumonia ${pct(r.probability)}, cut-off ${pct(r.threshold)}`);
  // CSSOM writes are allowed by the page's CSP (which forbids inline style attributes in markup).
  $(".bar-fill", card).style.width = pct(r.probability);
  $(".bar-threshold", card).style.left = pct(r.threshold);
  $(".threshold-text", card).textContent =
    `Cut-off ${pct(r.threshold)} (the marker): ${pneumonia ? "at or above" : "below"} it, hence ${r.prediction}.`;
  if (hasBand) {
    const band = $(".bar-band", card);
    band.style.left = pct(r.refer_low);
    band.style.width = pct(r.refer_high - r.refer_low);
    band.hidden = false;
    $(".threshold-text", card).textContent = refer
      ? `Inside the site's REFER band ${range}, hence REFER.`
      : `Outside the site's REFER band ${range}: ${pneumonia ? "above" : "below"} it, hence ${r.prediction}.`;
    if (refer) bar.setAttribute("aria-label", `Probability of pneumonia ${pct(r.probability)}, REFER band ${range}`);
  }
  if (r.p_normal !== null && r.p_normal !== undefined) {
    $('[data-testid="p-normal"]', card).textContent = pct(r.p_normal);
    $('[data-testid="p-bacterial"]', card).textContent = pct(r.p_bacterial);
    $('[data-testid="p-viral"]', card).textContent = pct(r.p_viral);
    $(".subtypes", card).hidden = false;
    showSubtypeCaveat();
  }
  const site = r.site_calibration ? `, site calibration ${r.site_calibration}` : "";
  $(".model-used", card).textContent = `Model ${r.model_name} v${r.model_version}${site}.`;
}

async function analyse(file, card) {
  const form = new FormData();
  form.append("file", file, file.name);
  form.append("explain", $("#explain-toggle").checked ? "true" : "false");
  let res;
  try {
    res = await fetch(API_PREDICT, { method: "POST", body: form });
  } catch (err) {
    showError(card, "The server could not be reached. Is `pneumo serve` still running?");
    return;
  }
  let body = null;
  try {
    body = await res.json();
  } catch (err) {
    body = null;
  }
  if (!res.ok) {
    const detail = body && typeof body.detail === "string" ? body.detail : `HTTP ${res.status}`;
    showError(card, detail);
    return;
  }
  showResult(card, body);
}

function pump() {
  while (running < PARALLEL_UPLOADS && queue.length) {
    const { file, card } = queue.shift();
    running += 1;
    analyse(file, card).finally(() => {
      running -= 1;
      pump();
    });
  }
}

function addFiles(files) {
  // The newest batch goes on top, in the order the files were chosen.
  const batch = document.createDocumentFragment();
  for (const file of files) {
    const card = newCard(file);
    batch.append(card);
    queue.push({ file, card });
  }
  $("#results").prepend(batch);
  $("#empty-state").hidden = $("#results").children.length > 0;
  pump();
}

function setUpDropZone() {
  const zone = $("#drop-zone");
  const input = $("#file-input");
  input.addEventListener("change", () => {
    addFiles(Array.from(input.files));
    input.value = ""; // choosing the same file again must fire "change" again
  });
  for (const type of ["dragenter", "dragover"]) {
    zone.addEventListener(type, (e) => {
      e.preventDefault();
      zone.classList.add("dragging");
    });
  }
  for (const type of ["dragleave", "drop"]) {
    zone.addEventListener(type, () => zone.classList.remove("dragging"));
  }
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    if (e.dataTransfer && e.dataTransfer.files.length) addFiles(Array.from(e.dataTransfer.files));
  });
  // A file dropped next to the zone must not make the browser navigate away from the results.
  window.addEventListener("dragover", (e) => e.preventDefault());
  window.addEventListener("drop", (e) => e.preventDefault());
}

// Links to a closed panel ("Model performance", "How to read a result") open it.
function setUpPanelLinks() {
  for (const link of document.querySelectorAll('a[href="#performance"], a[href="#howto"]')) {
    link.addEventListener("click", () => {
      $(`${link.getAttribute("href")} details`).open = true;
    });
  }
}

document.addEventListener("DOMContentLoaded", () => {
  setUpDropZone();
  setUpPanelLinks();
  $("#clear-results").addEventListener("click", () => {
    for (const card of document.querySelectorAll('#results > [data-state="done"], #results > [data-state="error"]')) {
      card.remove();
    }
    $("#empty-state").hidden = $("#results").children.length > 0;
  });
  loadModelInfo();
});
