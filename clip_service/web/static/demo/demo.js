// The demo page: collect texts and images, call the API, show the heatmap and the label bars.

import { ApiError, apiKey, postJson, setApiKey } from "./api.js";
import { ImageList, isImageAddress, plural } from "./images.js";
import { renderHeatmap, renderLabelCards, similarityRows } from "./results.js";

const $ = (id) => document.getElementById(id);

const form = $("compare-form");
const textsField = $("texts");
const urlField = $("image-url");
const fileField = $("image-files");
const dropZone = $("drop-zone");
const keyField = $("api-key");
const keyPanel = $("key-panel");
const compareButton = $("compare");
const status = $("status");

function say(message, kind = "") {
  status.textContent = message;
  status.className = kind ? `status ${kind}` : "status";
}

const images = new ImageList({ list: $("image-list"), empty: $("no-images"), announce: (m) => say(m) });

function readTexts() {
  const lines = textsField.value.split("\n").map((line) => line.trim()).filter(Boolean);
  return [...new Set(lines)];
}

// --- adding images ---------------------------------------------------------

function addTypedUrls() {
  const urls = urlField.value.trim().split(/\s+/).filter(Boolean);
  if (!urls.length) {
    say("Type or paste an image address first.", "error");
    urlField.focus();
    return;
  }
  urls.forEach((url) => images.addUrl(url));
  urlField.value = "";
  urlField.focus();
}

$("add-url").addEventListener("click", addTypedUrls);
urlField.addEventListener("keydown", (event) => {
  if (event.key === "Enter") {
    event.preventDefault();  // Enter here adds the address; it does not compare
    addTypedUrls();
  }
});

fileField.addEventListener("change", () => {
  images.addFiles(fileField.files);
  fileField.value = "";  // so choosing the same file again adds it again
});

function carriesImages(dataTransfer) {
  const types = [...(dataTransfer?.types || [])];
  return types.includes("Files") || types.includes("text/uri-list");
}

function isTextEntry(element) {
  return element instanceof HTMLTextAreaElement || element instanceof HTMLInputElement;
}

document.addEventListener("dragover", (event) => {
  if (!carriesImages(event.dataTransfer)) return;
  event.preventDefault();
  event.dataTransfer.dropEffect = "copy";
  dropZone.classList.add("dragging");
});
document.addEventListener("dragleave", (event) => {
  if (!event.relatedTarget) dropZone.classList.remove("dragging");  // left the window
});
document.addEventListener("drop", (event) => {
  dropZone.classList.remove("dragging");
  const data = event.dataTransfer;
  if (data?.files?.length) {
    event.preventDefault();
    images.addFiles(data.files);
    return;
  }
  if (isTextEntry(event.target)) return;  // text dropped into a field goes into the field
  const urls = (data?.getData("text/uri-list") || "").split(/\r?\n/)
    .map((line) => line.trim()).filter((line) => line && !line.startsWith("#"));
  if (urls.length) {
    event.preventDefault();
    urls.forEach((url) => images.addUrl(url));
  }
});

document.addEventListener("paste", (event) => {
  const data = event.clipboardData;
  const files = [...(data?.files || [])].filter((file) => file.type.startsWith("image/"));
  if (files.length) {
    event.preventDefault();
    images.addFiles(files);
    return;
  }
  if (isTextEntry(event.target)) return;  // ordinary text pasted into a field
  const lines = (data?.getData("text/plain") || "").split(/\s+/).filter(isImageAddress);
  if (lines.length) {
    event.preventDefault();
    lines.forEach((url) => images.addUrl(url));
  }
});

// --- the API key -----------------------------------------------------------

function showKeyState() {
  $("key-state").textContent = keyField.value ? "(set for this tab)" : "(none)";
}

keyField.value = apiKey();
showKeyState();
keyField.addEventListener("input", () => {
  setApiKey(keyField.value.trim());
  showKeyState();
});

function askForKey(error) {
  keyPanel.open = true;
  keyField.focus();
  const what = keyField.value ? "did not accept this API key" : "needs an API key";
  say(`The service ${what} (401${error.envelope.message ? `: ${error.envelope.message}` : ""}). ` +
      "Enter a valid key under API key, then compare again.", "error");
}

// --- comparing -------------------------------------------------------------

textsField.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
    event.preventDefault();
    form.requestSubmit();
  }
});

form.addEventListener("submit", (event) => {
  event.preventDefault();
  compare();
});

function errorsByIndex(errors) {
  return new Map((errors || []).map((error) => [error.index, error]));
}

function showFailure(error) {
  if (error instanceof ApiError && error.status === 401) askForKey(error);
  else say(error.message, "error");
}

async function compare() {
  const texts = readTexts();
  const items = [...images.items];
  if (!texts.length || !items.length) {
    say(!texts.length ? "Type at least one text, one per line." : "Add at least one image.", "error");
    (!texts.length ? textsField : urlField).focus();
    return;
  }
  $("results").hidden = true;
  $("labels").hidden = true;
  compareButton.disabled = true;
  form.setAttribute("aria-busy", "true");
  say(`Comparing ${plural(texts.length, "text")} with ${plural(items.length, "image")}…`);
  try {
    const sources = await Promise.all(items.map((item) => item.source()));
    const textCall = postJson("embed/text", { texts });
    const imageCall = postJson("embed/image", { urls: sources });
    const classifyCall = postJson("classify", { inputs: sources, parameters: { candidate_labels: texts } });
    classifyCall.catch(() => {});  // its failure is shown with the labels, not as an unhandled rejection

    const [textAnswer, imageAnswer] = await Promise.all([textCall, imageCall]);
    const errors = errorsByIndex(imageAnswer.errors);
    const rows = similarityRows(textAnswer.embeddings, imageAnswer.embeddings);
    const failed = rows.filter((row) => !row).length;
    renderHeatmap($("heatmap"), texts, items, rows, errors);  // a failed image's row says why
    $("model-line").textContent =
      `${textAnswer.model} (${textAnswer.pretrained}), ${textAnswer.dimensions} dimensions.`;
    $("results").hidden = false;
    say(`Compared ${plural(texts.length, "text")} with ${plural(items.length, "image")}` +
        (failed ? `; ${plural(failed, "image")} failed (see the table).` : "."), failed ? "warning" : "");
    await showLabels(classifyCall, items, texts);
  } catch (error) {
    showFailure(error);
  } finally {
    compareButton.disabled = false;
    form.removeAttribute("aria-busy");
  }
}

async function showLabels(classifyCall, items, texts) {
  const note = $("labels-note");
  const cards = $("label-cards");
  $("labels").hidden = false;
  note.textContent = "Asking /classify…";
  note.classList.remove("unavailable");
  cards.replaceChildren();
  try {
    const answer = await classifyCall;
    renderLabelCards(cards, items, answer.results || [], errorsByIndex(answer.errors));
    note.textContent = `Each image's scores from /classify, with the ${plural(texts.length, "text")} as candidate labels, best first.`;
  } catch (error) {
    if (error instanceof ApiError && error.status === 404) {
      note.textContent = "Label bars need POST /classify, which this service does not offer (yet). " +
        "The similarity table above does not depend on it.";
    } else if (error instanceof ApiError && error.status === 401) {
      note.textContent = "Label bars: the service needs a valid API key (401).";
    } else {
      note.textContent = `Label bars are not available: ${error.message}`;
    }
    note.classList.add("unavailable");
  }
}
