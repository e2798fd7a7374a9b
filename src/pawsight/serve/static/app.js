// pawsight's page: send the chosen picture to /predict and show the answer. No libraries, no network
// access beyond this server.
"use strict";

const $ = (id) => document.getElementById(id);
let model = null;       // GET /model: classes and limits
let previewUrl = null;

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = false;
}

function percent(p) {
  return (100 * p).toFixed(p >= 0.995 || p < 0.005 ? 0 : 1) + "%";
}

function render(record) {
  const label = $("label");
  const unknown = record.label === "unknown";
  label.textContent = unknown ? "Neither" : record.label;
  label.classList.toggle("unknown", unknown);
  const classes = Object.keys(record.probabilities);
  // For "unknown" the page says what was closest and why it is not that (the neither score against its
  // threshold), in the words `pawsight predict` prints (record.summary), and greys the class bars.
  const scored = typeof record.unknown_score === "number" && typeof record.unknown_threshold === "number";
  $("detail").textContent = !unknown ? percent(record.probability) + " sure"
    : "This looks like none of: " + classes.join(", ") + ". Closest: " + record.closest + " " +
      percent(record.probability) + (scored
        ? ", but its neither score " + record.unknown_score.toFixed(2) + " is above the threshold " +
          record.unknown_threshold.toFixed(2) + "."
        : ", but its neither score could not be computed.");
  $("detail").title = record.summary;
  const bars = $("bars");
  bars.replaceChildren();
  bars.classList.toggle("unknown", unknown);
  const rows = Object.entries(record.probabilities).sort((a, b) => b[1] - a[1]);
  for (const [name, p] of rows) {
    const li = document.createElement("li");
    li.dataset.class = name;
    const title = document.createElement("span");
    title.className = "name";
    title.textContent = name;
    title.title = name;
    const bar = document.createElement("div");
    bar.className = "bar";
    bar.setAttribute("role", "meter");
    bar.setAttribute("aria-label", name);
    bar.setAttribute("aria-valuemin", "0");
    bar.setAttribute("aria-valuemax", "100");
    bar.setAttribute("aria-valuenow", (100 * p).toFixed(1));
    bar.setAttribute("aria-valuetext", percent(p));
    const fill = document.createElement("span");
    fill.style.width = (100 * p).toFixed(1) + "%";
    bar.append(fill);
    const value = document.createElement("span");
    value.className = "value";
    value.textContent = percent(p);
    li.append(title, bar, value);
    bars.append(li);
  }
}

async function classify(file) {
  $("error").hidden = true;
  if (!file) return;
  if (model && file.size > model.limits.max_upload_bytes) {
    showError("This file is too large (" + (file.size / 1048576).toFixed(1) + " MB; the limit is " +
              (model.limits.max_upload_bytes / 1048576).toFixed(0) + " MB).");
    return;
  }
  if (previewUrl) URL.revokeObjectURL(previewUrl);
  previewUrl = URL.createObjectURL(file);
  $("preview").src = previewUrl;
  $("result").hidden = false;
  $("result").classList.add("busy");
  $("label").textContent = "Looking…";
  $("label").classList.remove("unknown");
  $("detail").textContent = "";
  $("bars").replaceChildren();
  const body = new FormData();
  body.append("file", file, file.name || "photo");
  try {
    const response = await fetch("/predict", { method: "POST", body });
    const answer = await response.json().catch(() => ({}));
    const record = answer.predictions && answer.predictions[0];
    if (!response.ok || !record || record.error) {
      $("result").hidden = true;
      showError((record && record.error ? "Cannot read this picture: " + record.error
                 : answer.error) || "The server answered " + response.status + ".");
      return;
    }
    render(record);
  } catch (err) {
    $("result").hidden = true;
    showError("Could not reach the server: " + err.message);
  } finally {
    $("result").classList.remove("busy");
  }
}

function setup() {
  for (const id of ["pick", "camera"]) {
    $(id).addEventListener("change", (event) => {
      classify(event.target.files[0]);
      event.target.value = "";  // choosing the same file again still triggers a prediction
    });
  }
  const drop = $("drop");
  for (const name of ["dragenter", "dragover"]) {
    drop.addEventListener(name, (event) => { event.preventDefault(); drop.classList.add("over"); });
  }
  for (const name of ["dragleave", "drop"]) {
    drop.addEventListener(name, () => drop.classList.remove("over"));
  }
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    classify(event.dataTransfer.files[0]);
  });
  document.addEventListener("paste", (event) => {
    const item = [...(event.clipboardData || {}).files || []][0];
    if (item) classify(item);
  });
  fetch("/model").then((r) => r.json()).then((info) => {
    model = info;
    $("about").textContent = "Recognises " + info.classes.join(", ") + (info.threshold === null ? "." :
      " — or says “Neither” for a picture of something else.");
  }).catch(() => {});
}

setup();
