// The images to compare: added by address, file picker, drag and drop or paste.
//
// A file never leaves the browser except inside the API call, as a data: URI
// (the same bytes, base64). An http(s) address is sent as it is, and the service
// decides whether it fetches it; to show a thumbnail the browser loads the image
// itself from there (the page's policy allows images from anywhere, and nothing
// else). An image that does not load keeps a tile saying "URL".

let nextId = 1;

/** One image: a picked file or an address. */
class ImageItem {
  constructor({ file = null, url = null }) {
    this.id = nextId++;
    this.file = file;
    this.url = url;
    if (file) {
      this.name = file.name || `pasted image ${this.id}`;
      // Kept for the page's lifetime: results may still show it after the item is removed.
      this.thumbnail = URL.createObjectURL(file);
    } else if (url.startsWith("data:")) {
      this.name = `data URI ${this.id}`;
      this.thumbnail = url;
    } else {
      this.name = shortName(url);
      this.thumbnail = isWebAddress(url) ? url : null;
    }
    this.thumbnailFailed = false;  // set once its image would not load: later renders show the tile at once
    this._source = null;
  }

  /** What the API is sent for this image: the address, or the file as a data: URI. */
  source() {
    if (!this._source) this._source = this.file ? readAsDataUri(this.file) : Promise.resolve(this.url);
    return this._source;
  }
}

function readAsDataUri(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(new Error(`${file.name} could not be read`));
    reader.readAsDataURL(file);
  });
}

/** "host/…/file.jpg" for an address: enough to tell images apart in a narrow column. */
export function shortName(url) {
  try {
    const parsed = new URL(url);
    const last = parsed.pathname.split("/").filter(Boolean).pop() || "";
    return last ? `${parsed.host}/…/${decodeURIComponent(last)}` : parsed.host;
  } catch {
    return url.slice(0, 60);
  }
}

/** Whether `url` is an absolute http or https address. */
function isWebAddress(url) {
  try {
    return ["http:", "https:"].includes(new URL(url).protocol);
  } catch {
    return false;
  }
}

/** Whether `text` looks like an image address the service may take. */
export function isImageAddress(text) {
  return /^https?:\/\/\S+$/i.test(text) || /^data:image\/[\w.+-]+;base64,/i.test(text);
}

/** The small square picture for `item`: its image, or a tile saying "URL" for an address that will not load. */
export function thumbnail(item, size = "small") {
  if (!item.thumbnail || item.thumbnailFailed) return urlTile(size);
  const img = document.createElement("img");
  img.className = `thumb thumb-${size}`;
  img.alt = "";  // the name next to it says which image this is
  if (!item.file) {
    img.addEventListener("error", () => {
      item.thumbnailFailed = true;
      img.replaceWith(urlTile(size));
    }, { once: true });
  }
  img.src = item.thumbnail;
  return img;
}

function urlTile(size) {
  const tile = document.createElement("span");
  tile.className = `thumb thumb-${size} thumb-url`;
  tile.setAttribute("aria-hidden", "true");
  tile.textContent = "URL";
  return tile;
}

/** The list of images on the page, and the ways to add to it. */
export class ImageList {
  constructor({ list, empty, announce }) {
    this.items = [];
    this.list = list;
    this.empty = empty;
    this.announce = announce;
  }

  addFiles(files) {
    const images = [...files].filter((f) => f.type.startsWith("image/"));
    const skipped = files.length - images.length;
    images.forEach((file) => this.items.push(new ImageItem({ file })));
    this.render();
    const added = images.length ? `Added ${plural(images.length, "image")}.` : "";
    const refused = skipped ? ` Left out ${plural(skipped, "file")} that ${skipped === 1 ? "is" : "are"} not an image.` : "";
    this.announce((added + refused).trim());
  }

  addUrl(url) {
    this.items.push(new ImageItem({ url }));
    this.render();
    this.announce(`Added ${shortName(url)}.`);
  }

  remove(id) {
    const index = this.items.findIndex((item) => item.id === id);
    if (index < 0) return;
    const [item] = this.items.splice(index, 1);
    this.render();
    this.announce(`Removed ${item.name}.`);
    // Keep the keyboard where it was: the next Remove button, else the previous, else the address field.
    const buttons = this.list.querySelectorAll("button");
    const next = buttons[Math.min(index, buttons.length - 1)];
    (next || document.getElementById("image-url")).focus();
  }

  render() {
    this.list.replaceChildren(...this.items.map((item) => this._row(item)));
    this.empty.hidden = this.items.length > 0;
  }

  _row(item) {
    const li = document.createElement("li");
    li.dataset.id = String(item.id);
    const name = document.createElement("span");
    name.className = "image-name";
    name.textContent = item.name;
    name.title = item.url && !item.url.startsWith("data:") ? item.url : item.name;
    const remove = document.createElement("button");
    remove.type = "button";
    remove.className = "link-button";
    remove.textContent = "Remove";
    remove.setAttribute("aria-label", `Remove ${item.name}`);
    remove.addEventListener("click", () => this.remove(item.id));
    li.append(thumbnail(item), name, remove);
    return li;
  }
}

export function plural(n, word) {
  return `${n} ${word}${n === 1 ? "" : "s"}`;
}
