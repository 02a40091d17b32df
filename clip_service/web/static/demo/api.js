// Calls to the service's JSON API, with the optional API key.
//
// Paths are relative ("embed/text"), so they resolve next to /demo, under any path prefix.

const KEY_STORAGE = "clip-service.api-key";

/** The API key the person entered, or "" (kept in sessionStorage: this tab only). */
export function apiKey() {
  try {
    return sessionStorage.getItem(KEY_STORAGE) || "";
  } catch {
    return "";  // storage can be switched off; the key then lives in the field alone
  }
}

/** Keep `key` for this tab (or forget it when empty). */
export function setApiKey(key) {
  try {
    if (key) sessionStorage.setItem(KEY_STORAGE, key);
    else sessionStorage.removeItem(KEY_STORAGE);
  } catch {
    // Nothing to do: without storage the key is not remembered across reloads.
  }
}

/** A call that did not answer 200: the service's error envelope, or what went wrong on the way. */
export class ApiError extends Error {
  constructor(path, status, envelope) {
    const body = envelope && typeof envelope === "object" ? envelope : {};
    const message = typeof body.message === "string" ? body.message : "";
    super(describe(path, status, message, body.errors));
    this.path = path;
    this.status = status;  // 0 when no answer came back
    this.envelope = body;
  }
}

function describe(path, status, message, errors) {
  if (status === 0) return `The service could not be reached for ${path} (${message || "network error"}).`;
  const details = flattenErrors(errors);
  const head = `${path} answered ${status}${message ? `: ${message}` : ""}`;
  return details.length ? `${head} (${details.join("; ")})` : head;
}

/** The envelope's `errors` ({field: [messages]} or nested) as "field: message" lines. */
function flattenErrors(errors, prefix = "") {
  if (!errors || typeof errors !== "object") return [];
  const lines = [];
  for (const [key, value] of Object.entries(errors)) {
    const name = key === "_schema" ? prefix.replace(/\.$/, "") : `${prefix}${key}`;
    if (Array.isArray(value) && value.every((v) => typeof v === "string")) {
      lines.push(name ? `${name}: ${value.join(" ")}` : value.join(" "));
    } else if (typeof value === "string") {
      lines.push(name ? `${name}: ${value}` : value);
    } else {
      lines.push(...flattenErrors(value, `${name}.`));
    }
  }
  return lines.slice(0, 5);  // enough to act on; the rest is in the network panel
}

/** POST `body` as JSON to `path`; resolve to the parsed 200 answer, or reject with an ApiError. */
export async function postJson(path, body) {
  const headers = { "Content-Type": "application/json", Accept: "application/json" };
  const key = apiKey();
  if (key) headers.Authorization = `Bearer ${key}`;
  let response;
  try {
    response = await fetch(path, { method: "POST", headers, body: JSON.stringify(body) });
  } catch (error) {
    throw new ApiError(path, 0, { message: error.message });
  }
  let data = null;
  try {
    data = await response.json();
  } catch {
    data = null;  // a proxy's HTML error page, say: the status still tells what happened
  }
  if (!response.ok) throw new ApiError(path, response.status, data);
  if (data === null) throw new ApiError(path, response.status, { message: "the answer was not JSON" });
  return data;
}
