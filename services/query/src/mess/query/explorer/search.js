// Search by example: an audio clip (dropped anywhere on the page, or chosen) sent to POST /search.

import { ApiError, postForm } from "./api.js";
import { describe } from "./errors.js";
import { clone } from "./dom.js";
import { answerSummary, pickItem } from "./picks.js";

// The last answer, so the #/search view shows it again after a visit elsewhere.
const state = { clip: null, strategy: "similar", k: "10", status: "", body: null, pending: null };
let view = null;

function explain(error) {
  if (error instanceof ApiError) {
    if (error.status === 404 || error.status === 405) return "this server has no search by example (POST /search) yet";
    if (error.status === 415) return `the server cannot read this file as audio (${error.detail})`;
    if (error.status === 503) return `the server cannot search right now (${error.detail}); try again shortly`;
  }
  return describe(error);
}

export async function searchByExample(file) {
  const request = Symbol("search");
  state.pending = request;
  state.clip = file.name || "clip";
  state.body = null;
  state.status = `Listening to ${state.clip}…`;
  if (location.hash !== "#/search") location.hash = "#/search";
  else if (view) view.render();
  const form = new FormData();
  form.append("clip", file, state.clip);
  form.append("k", state.k);
  form.append("strategy", state.strategy);
  try {
    const body = await postForm("/search", form);
    if (state.pending !== request) return;
    state.body = body;
    state.status = `Tracks that sound like ${state.clip}: ${answerSummary(state.body)}`;
  } catch (error) {
    if (state.pending !== request) return;
    state.status = `Search by example failed: ${explain(error)}.`;
  }
  if (state.pending === request && view) view.render();
}

export class SearchView {
  constructor(root) {
    this.node = clone("search-template");
    root.replaceChildren(this.node);
    this.form = this.node.querySelector(".s-form");
    this.form.elements.namedItem("strategy").value = state.strategy;
    this.form.elements.namedItem("k").value = state.k;
    this.form.addEventListener("change", (event) => {
      if (event.target.name === "strategy") state.strategy = event.target.value;
      if (event.target.name === "k") state.k = event.target.value;
      if (event.target.name === "clip" && event.target.files.length) searchByExample(event.target.files[0]);
    });
    this.form.addEventListener("submit", (event) => {
      event.preventDefault();
      const files = this.form.elements.namedItem("clip").files;
      if (files.length) searchByExample(files[0]);
      else this.node.querySelector(".s-summary").textContent = "Choose an audio file first, or drop one on the page.";
    });
    view = this;
    this.render();
  }

  heading() {
    return this.node.querySelector(".s-title");
  }

  render() {
    this.node.querySelector(".s-summary").textContent = state.status;
    const picks = state.body ? state.body.recommendations.map((pick) => pickItem(pick)) : [];
    this.node.querySelector(".s-list").replaceChildren(...picks);
  }

  dispose() {
    if (view === this) view = null;
  }
}

// Dragging files anywhere over the page shows where to drop them; a drop starts the search.
export function acceptDrops() {
  const overlay = document.getElementById("drop-overlay");
  let depth = 0;
  const carriesFiles = (event) => Array.from(event.dataTransfer?.types || []).includes("Files");
  document.addEventListener("dragenter", (event) => {
    if (!carriesFiles(event)) return;
    depth += 1;
    overlay.hidden = false;
  });
  document.addEventListener("dragleave", () => {
    depth = Math.max(0, depth - 1);
    if (depth === 0) overlay.hidden = true;
  });
  document.addEventListener("dragover", (event) => {
    if (carriesFiles(event)) event.preventDefault(); // allows the drop
  });
  document.addEventListener("drop", (event) => {
    depth = 0;
    overlay.hidden = true;
    if (!carriesFiles(event)) return;
    event.preventDefault(); // else the browser navigates away to the file
    const file = event.dataTransfer.files[0];
    if (file) searchByExample(file);
  });
}
