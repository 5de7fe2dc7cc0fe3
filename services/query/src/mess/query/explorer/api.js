// Calls to the public API. The read key (when the server asks for one) lives in sessionStorage:
// it is sent as X-API-Key, never put in a URL, and forgotten when the tab closes.

const KEY_ITEM = "mess.apiKey";

export function apiKey() {
  return sessionStorage.getItem(KEY_ITEM) || "";
}

export function setApiKey(value) {
  if (value) sessionStorage.setItem(KEY_ITEM, value);
  else sessionStorage.removeItem(KEY_ITEM);
}

export class ApiError extends Error {
  constructor(status, detail) {
    super(detail);
    this.status = status;
    this.detail = detail;
  }
}

// FastAPI answers either {"detail": "sentence"} or {"detail": [{"loc": [...], "msg": "..."}]}.
function detailText(body, status) {
  const detail = body && body.detail;
  if (typeof detail === "string") return detail;
  if (Array.isArray(detail)) {
    return detail
      .map((item) => {
        const where = Array.isArray(item.loc) ? item.loc.filter((p) => p !== "query" && p !== "body").join(".") : "";
        return where ? `${where}: ${item.msg}` : String(item.msg);
      })
      .join("; ");
  }
  return `the server answered ${status}`;
}

async function request(path, { method = "GET", body, accept = "application/json", signal } = {}) {
  const headers = new Headers({ Accept: accept });
  const key = apiKey();
  if (key) headers.set("X-API-Key", key);
  const response = await fetch(path, { method, body, headers, signal, credentials: "same-origin" });
  if (!response.ok) {
    let parsed = null;
    try {
      parsed = await response.json();
    } catch {
      parsed = null;
    }
    const error = new ApiError(response.status, detailText(parsed, response.status));
    if (response.status === 401) document.dispatchEvent(new CustomEvent("mess:key-needed", { detail: error.detail }));
    throw error;
  }
  return response;
}

export async function getJson(path, options) {
  return (await request(path, options)).json();
}

export async function postForm(path, form, options = {}) {
  return (await request(path, { ...options, method: "POST", body: form })).json();
}

export async function getBlob(path, options = {}) {
  return (await request(path, { ...options, accept: "*/*" })).blob();
}

export function query(params) {
  const search = new URLSearchParams();
  for (const [name, value] of Object.entries(params)) {
    if (value !== undefined && value !== null && value !== "") search.set(name, String(value));
  }
  const text = search.toString();
  return text ? `?${text}` : "";
}
