// Building DOM from data without ever parsing it as HTML: every value goes in as a text node.

export function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "class") node.className = value;
    else if (name === "text") node.textContent = String(value);
    else if (name === "href") node.setAttribute("href", safeHref(value));
    else if (name.startsWith("on") || name === "style" || name === "srcdoc") throw new Error(`el(): ${name} is not allowed`);
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

// Only in-page routes and same-origin paths: a value can never become a javascript: URL.
function safeHref(value) {
  const text = String(value);
  return text.startsWith("#/") || (text.startsWith("/") && !text.startsWith("//")) ? text : "#/";
}

export function clone(templateId) {
  const template = document.getElementById(templateId);
  return template.content.firstElementChild.cloneNode(true);
}

export function trackHref(trackId, params = "") {
  return `#/track/${encodeURIComponent(trackId)}${params}`;
}

export function clock(seconds) {
  if (!Number.isFinite(seconds) || seconds < 0) return "0:00";
  const whole = Math.floor(seconds);
  const minutes = Math.floor(whole / 60);
  return `${minutes}:${String(whole % 60).padStart(2, "0")}`;
}

const STATUSES = new Set(["indexed", "embedded", "registered", "failed", "removed", "unknown"]);

export function statusBadge(status) {
  const known = STATUSES.has(status) ? status : "unknown";
  return el("span", { class: `badge status-${known}`, text: status || "unknown" });
}
