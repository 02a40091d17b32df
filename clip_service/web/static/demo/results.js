// What a comparison shows: the cosine heatmap and the zero-shot label bars.
//
// Elements are built with the DOM and coloured through the CSSOM (element.style),
// which the page's Content-Security-Policy allows; it refuses style="" markup.

import { thumbnail } from "./images.js";

/** Cosine similarity of two vectors (the service's are unit length; dividing keeps this exact anyway). */
export function cosine(a, b) {
  let dot = 0;
  let aa = 0;
  let bb = 0;
  for (let i = 0; i < a.length; i++) {
    dot += a[i] * b[i];
    aa += a[i] * a[i];
    bb += b[i] * b[i];
  }
  return dot / Math.sqrt(aa * bb);
}

/** For each image, its cosines with every text, or null where the image failed. */
export function similarityRows(textVectors, imageVectors) {
  return imageVectors.map((v) => (v && v.length ? textVectors.map((t) => cosine(t, v)) : null));
}

// Light to dark blue; text turns white past the middle so every value stays readable.
const LIGHT = [239, 246, 255];
const DARK = [30, 64, 175];

function heatColour(t) {
  const mix = LIGHT.map((c, i) => Math.round(c + (DARK[i] - c) * t));
  return `rgb(${mix.join(", ")})`;
}

function imageHeader(item, index) {
  const th = document.createElement("th");
  th.scope = "row";
  const wrap = document.createElement("span");
  wrap.className = "row-image";
  const name = document.createElement("span");
  name.className = "image-name";
  name.textContent = `${index + 1}. ${item.name}`;
  name.title = item.url && !item.url.startsWith("data:") ? item.url : item.name;
  wrap.append(thumbnail(item, "row"), name);
  th.append(wrap);
  return th;
}

/** An element saying `error`'s code and message. */
export function errorNote(error, tag = "span") {
  const note = document.createElement(tag);
  note.className = "item-error";
  note.dataset.code = error.code;
  const code = document.createElement("code");
  code.textContent = error.code;
  note.append(code, `: ${error.message}`);
  return note;
}

/**
 * Fill `table` with one row per image and one column per text.
 * `rows[i]` is image i's cosines (null if it failed); `errors` maps an image's index to its error entry.
 */
export function renderHeatmap(table, texts, items, rows, errors) {
  const values = rows.filter(Boolean).flat();
  const low = Math.min(...values);
  const high = Math.max(...values);
  const span = high - low || 1;

  const caption = document.createElement("caption");
  caption.className = "visually-hidden";
  caption.textContent = "Cosine similarity of each image (rows) with each text (columns); " +
    "a star marks each image's best match.";

  const head = document.createElement("tr");
  const corner = document.createElement("th");
  corner.scope = "col";
  corner.textContent = "Image";
  head.append(corner);
  for (const text of texts) {
    const th = document.createElement("th");
    th.scope = "col";
    th.className = "text-col";
    th.title = text;
    const words = document.createElement("span");
    words.className = "text-head";  // clamped to a few lines on screen; read out in full
    words.textContent = text;
    th.append(words);
    head.append(th);
  }
  const thead = document.createElement("thead");
  thead.append(head);

  const tbody = document.createElement("tbody");
  items.forEach((item, i) => {
    const tr = document.createElement("tr");
    tr.dataset.image = String(i);
    tr.append(imageHeader(item, i));
    const row = rows[i];
    if (!row) {
      const td = document.createElement("td");
      td.colSpan = texts.length;
      td.className = "error-cell";
      td.append(errors.get(i) ? errorNote(errors.get(i)) : "no vector came back for this image");
      tr.append(td);
    } else {
      const best = row.indexOf(Math.max(...row));
      row.forEach((value, j) => {
        const td = document.createElement("td");
        const t = (value - low) / span;
        td.className = j === best ? "cell best" : "cell";
        td.dataset.value = String(value);
        td.style.backgroundColor = heatColour(t);
        td.style.color = t > 0.55 ? "#fff" : "#111827";
        td.textContent = value.toFixed(3);
        if (j === best) {
          const star = document.createElement("span");
          star.className = "star";
          star.setAttribute("aria-hidden", "true");
          star.textContent = " ★";
          const said = document.createElement("span");
          said.className = "visually-hidden";
          said.textContent = " (best match)";
          td.append(star, said);
        }
        tr.append(td);
      });
    }
    tbody.append(tr);
  });
  table.replaceChildren(caption, thead, tbody);
}

/**
 * One card per image with its labels' scores as bars, best first.
 * `results[i]` is the service's [{label, score}, ...] for image i, [] where it failed.
 */
export function renderLabelCards(container, items, results, errors) {
  const cards = items.map((item, i) => {
    const card = document.createElement("figure");
    card.className = "label-card";
    card.dataset.image = String(i);
    const caption = document.createElement("figcaption");
    const name = document.createElement("span");
    name.className = "image-name";
    name.textContent = `${i + 1}. ${item.name}`;
    caption.append(thumbnail(item, "row"), name);
    card.append(caption);

    const scores = results[i] || [];
    if (!scores.length) {
      card.append(errors.get(i) ? errorNote(errors.get(i), "p") : errorNote(
        { code: "no_result", message: "no labels came back for this image" }, "p"));
      return card;
    }
    const list = document.createElement("ol");
    list.className = "bars";
    for (const { label, score } of scores) {
      const li = document.createElement("li");
      li.dataset.label = label;
      li.dataset.score = String(score);
      const text = document.createElement("span");
      text.className = "bar-label";
      text.textContent = label;
      text.title = label;
      const track = document.createElement("span");
      track.className = "bar-track";
      track.setAttribute("aria-hidden", "true");
      const fill = document.createElement("span");
      fill.className = "bar-fill";
      fill.style.width = `${(Math.max(0, Math.min(1, score)) * 100).toFixed(1)}%`;
      track.append(fill);
      const value = document.createElement("span");
      value.className = "bar-value";
      value.textContent = `${(score * 100).toFixed(1)}%`;
      li.append(text, track, value);
      list.append(li);
    }
    card.append(list);
    return card;
  });
  container.replaceChildren(...cards);
}
