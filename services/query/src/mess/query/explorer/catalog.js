// The catalog: text search and filters over GET /tracks, one page at a time by cursor.

import { describe } from "./errors.js";
import { getJson, query } from "./api.js";
import { el, statusBadge, trackHref } from "./dom.js";

const PAGE = 50;

export class Catalog {
  constructor() {
    this.form = document.getElementById("catalog-form");
    this.list = document.getElementById("track-list");
    this.more = document.getElementById("catalog-more");
    this.summary = document.getElementById("catalog-summary");
    this.cursor = null;
    this.shown = 0;
    this.filters = {};
    this.generation = 0;
    this.current = null;
    this.form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.search();
    });
    this.form.addEventListener("change", (event) => {
      if (event.target.name === "status") this.search();
    });
    this.more.addEventListener("click", () => this.load(true));
  }

  search() {
    const data = new FormData(this.form);
    this.filters = {};
    for (const name of ["text", "composer", "era", "dataset", "status"]) {
      const value = String(data.get(name) || "").trim();
      if (value) this.filters[name] = value;
    }
    return this.load(false);
  }

  async load(append) {
    const generation = ++this.generation;
    if (!append) {
      this.cursor = null;
      this.shown = 0;
    }
    this.summary.textContent = "Loading tracks…";
    this.more.hidden = true;
    let page;
    try {
      page = await getJson(`/tracks${query({ ...this.filters, limit: PAGE, cursor: append ? this.cursor : null })}`);
    } catch (error) {
      if (generation === this.generation) this.summary.textContent = `Could not list tracks: ${describe(error)}`;
      return;
    }
    if (generation !== this.generation) return; // a newer search started meanwhile
    if (!append) this.list.replaceChildren();
    const firstNew = this.list.children.length;
    for (const track of page.tracks) this.list.append(this.item(track));
    this.shown += page.count;
    this.cursor = page.next_cursor;
    this.more.hidden = !this.cursor;
    this.summary.textContent =
      this.shown === 0 ? "No tracks match." : `${this.shown} track${this.shown === 1 ? "" : "s"}${this.cursor ? ", more below" : ""}.`;
    this.mark(this.current);
    // After "More tracks", keyboard users continue where the new tracks begin.
    if (append && this.list.children[firstNew]) this.list.children[firstNew].querySelector("a").focus();
  }

  item(track) {
    const who = [track.composer, track.performer, track.dataset].filter(Boolean).join(" · ");
    return el(
      "li",
      { "data-track-id": track.track_id },
      el("a", { href: trackHref(track.track_id), text: track.title || track.track_id }),
      " ",
      statusBadge(track.status),
      el("span", { class: "sub", text: who || track.track_id }),
    );
  }

  mark(trackId) {
    this.current = trackId;
    for (const item of this.list.children) {
      if (item.dataset.trackId === trackId) item.setAttribute("aria-current", "true");
      else item.removeAttribute("aria-current");
    }
  }
}
