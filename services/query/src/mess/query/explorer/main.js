// The explorer's entry point: the key field, the catalog, and a hash router for the views
// (#/ welcome, #/track/<id>?strategy=…, #/map, #/search).

import { apiKey, setApiKey } from "./api.js";
import { Catalog } from "./catalog.js";
import { clone } from "./dom.js";
import { MapView } from "./map.js";
import { SearchView, acceptDrops } from "./search.js";
import { TrackView } from "./track.js";

const root = document.getElementById("view");
const notice = document.getElementById("notice");
const keyForm = document.getElementById("key-form");
const keyInput = document.getElementById("api-key");
const catalog = new Catalog();
let current = null;

class WelcomeView {
  constructor(target) {
    this.node = clone("welcome-template");
    target.replaceChildren(this.node);
  }

  heading() {
    return this.node.querySelector("h2");
  }

  dispose() {}
}

function parseRoute() {
  const hash = location.hash;
  if (!hash.startsWith("#/")) return null; // an in-page anchor (the skip link), not a view
  const [path, search = ""] = hash.slice(1).split("?");
  const parts = path.split("/").filter(Boolean);
  if (parts[0] === "track" && parts[1]) {
    try {
      return { view: "track", trackId: decodeURIComponent(parts[1]), search };
    } catch {
      return { view: "welcome" };
    }
  }
  if (parts[0] === "map") return { view: "map" };
  if (parts[0] === "search") return { view: "search" };
  return { view: "welcome" };
}

function route(initial = false) {
  const next = parseRoute();
  if (next === null) {
    if (current === null) route.show({ view: "welcome" }, initial);
    return;
  }
  route.show(next, initial);
}

route.show = (next, initial) => {
  // Same track, other parameters: only the recommendations change; the player keeps playing.
  if (next.view === "track" && current instanceof TrackView && current.trackId === next.trackId) {
    current.update(next.search);
    return;
  }
  if (current) current.dispose();
  if (next.view === "track") current = new TrackView(root, next.trackId, next.search);
  else if (next.view === "map") current = new MapView(root);
  else if (next.view === "search") current = new SearchView(root);
  else current = new WelcomeView(root);
  catalog.mark(next.view === "track" ? next.trackId : null);
  // Screen readers hear the new view; the first load leaves focus at the top of the page.
  if (!initial) current.heading().focus();
};

keyInput.value = apiKey();
keyForm.addEventListener("submit", (event) => {
  event.preventDefault();
  setApiKey(keyInput.value.trim());
  notice.textContent = keyInput.value.trim() ? "Key saved for this tab." : "";
  catalog.search();
  const shown = current;
  current = null;
  if (shown) shown.dispose();
  route();
});
document.getElementById("key-forget").addEventListener("click", () => {
  setApiKey("");
  keyInput.value = "";
  notice.textContent = "Key forgotten.";
});
document.addEventListener("mess:key-needed", () => {
  notice.textContent = apiKey()
    ? "The server refused this API key: enter another one above."
    : "This server needs an API key: enter it above.";
});

window.addEventListener("hashchange", () => route());
acceptDrops();
catalog.search();
route(true);
