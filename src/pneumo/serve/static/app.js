// Pneumo's page: upload X-rays, show each result in its own card. No framework, no build step, no other hosts.
"use strict";

// Relative URLs, so the page also works when the app is mounted under a path prefix.
const API_PREDICT = "api/v1/predict";
const API_MODEL = "api/v1/model";
const PARALLEL_UPLOADS = 2; // the server shares its CPUs with everyone else: no point flooding it

const $ = (sel, root = document) => root.querySelector(sel);
const pct = (p) => `${(p * 100).toFixed(1)}%`;
const isNumber = (x) => typeof x === "number" && Number.isFinite(x);

let model = null;
const queue = [];
let running = 0;

function formatMetric(value) {
  return typeof value === "number" && Number.isFinite(value) ? pct(value) : "not recorded";
}

async function loadModelInfo() {
  try {
    const res = await fetch(API_MODEL);
    if (!res.ok) throw new Error(`HTTP ${res.status}`);
    model = await res.json();
  } catch (err) {
    $("#model-name").textContent = "unavailable";
    return;
  }
  const v = model.validation || {};
  $("#model-name").textContent = `${model.name} v${model.version}`;
  $("#model-threshold").textContent = pct(model.threshold);
  $("#model-sensitivity").textContent = formatMetric(v.sensitivity);
  $("#model-specificity").textContent = formatMetric(v.specificity);
  const worst = (v.geometry_shift || {}).worst;
  showSiteInfo(model.site);
  $("#model-shift").textContent = worst
    ? `${formatMetric(worst.sensitivity)} / ${formatMetric(worst.specificity)}`
    : "not measured";
  showShiftChecks(v.geometry_shift || {});
  showOperatingPoint(v.operating_point, Boolean(model.site));
  showBorderHidden(v);
  $("#footer-version").textContent = `Pneumo ${model.pneumo_version} · model ${model.name} v${model.version}`;
  if (model.max_upload_mb) $("#upload-limit").textContent = `, up to ${model.max_upload_mb} MB each`;
}

// The check that hides the outer 15 % of the image under flat grey (pneumo.shifts): a model that reads the lungs
// keeps its AUC there. Model files made before it was checked do not have it, and show nothing about it.
const BORDER_HIDDEN = "border masked 15%";
const RULES = {
  worst_case: {
    name: "Worst-case rule",
    how: (op) => `the largest margin to sensitivity ${pct(op.target_sensitivity)} and specificity ` +
      `${pct(op.target_specificity)} in the worst framing condition`,
  },
  pooled: {
    name: "Pooled rule",
    how: (op) => `the highest threshold with sensitivity ${pct(op.target_sensitivity)} on validation pooled with ` +
      "its zoomed, squeezed and border-hidden copies",
  },
};

// The worst over the checks includes the border-hidden one in newer model files: say how many checks, and which.
function showShiftChecks(shift) {
  const checks = Object.keys(shift).filter((k) => k !== "worst");
  if (!checks.includes(BORDER_HIDDEN)) return;
  const label = $("#model-shift-label");
  label.textContent =
    `Worst of ${checks.length} checks (framing shifts, border hidden; internal validation): sens. / spec.`;
  label.parentElement.title = `Worst case over the same validation images under ${checks.join(", ")}`;
}

// "sens. 97.0% (zoom 1.25 (cropped)) / spec. 93.0% (clean validation)": the worst framing condition of each figure.
function worstFraming(rule) {
  const r = rule || {};
  const w = r.worst_framing || {};
  if (!isNumber(r.threshold) || !isNumber(w.sensitivity) || !isNumber(w.specificity)) return null;
  const of = (name) => (typeof name === "string" ? ` (${name === "clean" ? "clean validation" : name})` : "");
  return `sens. ${pct(w.sensitivity)}${of(w.sensitivity_of)} / spec. ${pct(w.specificity)}${of(w.specificity_of)}`;
}

// The threshold rule in force with its worst-framing operating point, and the other rule beside it. Model files made
// before both rules were recorded have no `rules`: nothing is shown.
function showOperatingPoint(op, siteInForce) {
  if (!op || !op.rules || !RULES[op.rule]) return;
  const rule = op.rules[op.rule] || {};
  const figures = worstFraming(rule);
  if (!figures) return;
  $("#model-operating").textContent = `${RULES[op.rule].name}, threshold ${pct(rule.threshold)}: ${figures}`;
  if (isNumber(op.target_sensitivity) && isNumber(op.target_specificity)) {
    $("#operating-info").title = `${RULES[op.rule].name}: ${RULES[op.rule].how(op)}.`;
  }
  if (siteInForce) {
    $("#model-operating-label").textContent = "Threshold rule as shipped (internal validation, worst framing)";
  }
  for (const [name, other] of Object.entries(op.rules)) {
    const said = name !== op.rule && RULES[name] ? worstFraming(other) : null;
    if (said) {
      $("#model-operating-other").textContent =
        `Not in force: ${RULES[name].name}, threshold ${pct(other.threshold)}: ${said}`;
    }
  }
  $("#operating-info").hidden = false;
}

function showBorderHidden(v) {
  const hidden = (v.geometry_shift || {})[BORDER_HIDDEN] || {};
  if (!isNumber(hidden.roc_auc)) return;
  const clean = isNumber(v.roc_auc) ? ` (clean ${v.roc_auc.toFixed(3)})` : "";
  $("#model-border-auc").textContent = `${hidden.roc_auc.toFixed(3)}${clean}`;
  $("#border-info").hidden = false;
}

// A site calibration (pneumo adapt) replaces the shipped operating point: say which one is in force, and show the
// site's cross-validated figures instead of the internal-validation ones.
function showSiteInfo(site) {
  if (!site) return;
  const cv = site.cross_validated || {};
  const when = String(site.created || "").slice(0, 10);
  const band = site.refer ? `, REFER ${pct(site.refer.low)}–${pct(site.refer.high)}` : "";
  $("#model-site").textContent = `${site.name} (${when}, ${site.sample.n} images${band})`;
  $("#site-info").classList.add("is-site");
  $("#site-info").dataset.site = site.name;
  $("#model-sensitivity-label").textContent = "Sensitivity (this site, cross-validated)";
  $("#model-specificity-label").textContent = "Specificity (this site, cross-validated)";
  $("#model-sensitivity").textContent = formatMetric((cv.sensitivity || {}).value);
  $("#model-specificity").textContent = formatMetric((cv.specificity || {}).value);
  for (const w of site.warnings || []) {
    if (w.startsWith("SITE SAMPLE TOO SMALL")) $("#model-site").textContent += " · sample too small";
  }
}

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
    note.textContent = "Warm colours: regions that pushed the model towards pneumonia (not a lesion outline).";
  } else if (result.explain_error) {
    note.textContent = `No heat map: ${result.explain_error}`;
  }
}

function showResult(card, r) {
  const pneumonia = r.prediction === "PNEUMONIA";
  const refer = r.prediction === "REFER";
  const kind = refer ? "refer" : pneumonia ? "pneumonia" : "normal";
  card.dataset.state = "done";
  card.dataset.prediction = r.prediction;
  card.classList.add(`is-${kind}`);
  $(".status", card).textContent = `${r.model_name} v${r.model_version}`;

  const img = $(".xray-img", card);
  img.src = `data:image/png;base64,${r.image}`;
  img.alt = `Chest X-ray ${r.filename} as read by the model`;
  showHeatmap(card, r);

  const decision = $(".decision", card);
  decision.textContent = r.prediction;
  decision.classList.add(kind);
  $(".probability", card).textContent = pct(r.probability);
  card.dataset.probability = String(r.probability);

  const bar = $(".bar", card);
  bar.setAttribute("aria-valuenow", (r.probability * 100).toFixed(1));
  bar.setAttribute("aria-label", `Probability of pneumonia ${pct(r.probability)}, threshold ${pct(r.threshold)}`);
  // CSSOM writes are allowed by the page's CSP (which forbids inline style attributes in markup).
  $(".bar-fill", card).style.width = pct(r.probability);
  $(".bar-threshold", card).style.left = pct(r.threshold);
  $(".threshold-text", card).textContent =
    `Operating threshold ${pct(r.threshold)}: ${pneumonia ? "at or above" : "below"} it, hence ${r.prediction}.`;
  if (typeof r.refer_low === "number" && typeof r.refer_high === "number") {
    const band = $(".bar-band", card);
    band.style.left = pct(r.refer_low);
    band.style.width = pct(r.refer_high - r.refer_low);
    band.hidden = false;
    const range = `${pct(r.refer_low)}–${pct(r.refer_high)}`;
    $(".threshold-text", card).textContent = refer
      ? `Inside the site's REFER band ${range}, hence REFER.`
      : `Outside the site's REFER band ${range}: ${pneumonia ? "above" : "below"} it, hence ${r.prediction}.`;
    $(".refer-note", card).hidden = !refer;
    if (refer) bar.setAttribute("aria-label", `Probability of pneumonia ${pct(r.probability)}, REFER band ${range}`);
  }

  if (r.p_normal !== null && r.p_normal !== undefined) {
    $('[data-testid="p-normal"]', card).textContent = pct(r.p_normal);
    $('[data-testid="p-bacterial"]', card).textContent = pct(r.p_bacterial);
    $('[data-testid="p-viral"]', card).textContent = pct(r.p_viral);
    // The split is weaker than the decision and was measured within the training period only: say so beside it.
    const v = (model || {}).validation || {};
    const worst = (v.geometry_shift || {}).worst || {};
    const shifted = typeof worst.bacterial_vs_viral === "number"
      ? `; under framing shifts of those X-rays ${formatMetric(worst.bacterial_vs_viral)} at worst, with up to ` +
        `${formatMetric(worst.subtype_flipped)} of the calls changed`
      : "";
    const measured = typeof v.bacterial_vs_viral_accuracy === "number"
      ? `bacterial vs viral was right for ${formatMetric(v.bacterial_vs_viral_accuracy)} of pneumonia images in ` +
        `internal validation (X-rays of the training period)${shifted}`
      : "how often bacterial vs viral is right is not recorded in this model file";
    $('[data-testid="subtype-note"]', card).textContent =
      `Indicative only: ${measured}; it was not validated on later X-rays.`;
    $(".subtypes", card).hidden = false;
  }

  const domain = $(".domain-line", card);
  if (r.in_domain === false) {
    $(".ood-warning", card).hidden = false;
    $(".unreliable-tag", card).hidden = false;
    card.classList.add("is-ood");
    card.dataset.inDomain = "false";
    domain.textContent = "Domain check: FAILED — the image is unlike the validation X-rays.";
  } else if (r.in_domain === true) {
    card.dataset.inDomain = "true";
    domain.textContent = "Domain check: passed (the image resembles the validation X-rays).";
  } else {
    domain.textContent = "Domain check: not available for this model.";
  }
  $(".card-body", card).hidden = false;
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

document.addEventListener("DOMContentLoaded", () => {
  setUpDropZone();
  $("#clear-results").addEventListener("click", () => {
    for (const card of document.querySelectorAll('#results > [data-state="done"], #results > [data-state="error"]')) {
      card.remove();
    }
    $("#empty-state").hidden = $("#results").children.length > 0;
  });
  loadModelInfo();
});
