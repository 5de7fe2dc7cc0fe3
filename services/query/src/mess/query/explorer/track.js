// The track view: metadata, the audio player with its waveform, and recommendations.

import { describe } from "./errors.js";
import { apiKey, getBlob, getJson, query } from "./api.js";
import { clock, clone, el, statusBadge } from "./dom.js";
import { answerSummary, pickItem } from "./picks.js";
import { Waveform } from "./waveform.js";

// Which parameters each strategy takes (the API refuses the others with a 422).
const STRATEGIES = {
  similar: { params: [], help: "The nearest tracks by embedding (cosine similarity)." },
  balanced: { params: ["pool", "weights"], help: "Similarity blended with shared composer, era and form, by weight." },
  diverse: { params: ["pool", "lambda"], help: "Similar, but each pick also unlike the ones before it (MMR)." },
  complementary: { params: ["pool"], help: "Close tracks from other composers, eras or forms." },
  exploration: { params: ["pool", "floor", "seed"], help: "A random sample of the candidates above a similarity floor." },
  versions: { params: [], help: "Only other versions of the same work, found by aligning pitch sequences." },
};
const WEIGHTS = ["similarity", "composer", "era", "form"];
const META = [
  ["Composer", (t) => t.composer_full || t.composer],
  ["Work", (t) => t.work],
  ["Movement", (t) => t.movement],
  ["Performer", (t) => t.performer],
  ["Instrument", (t) => t.instrument],
  ["Era", (t) => t.era],
  ["Form", (t) => t.form],
  ["Key", (t) => t.key],
  ["Year", (t) => t.year],
  ["Duration", (t) => (typeof t.duration_s === "number" ? clock(t.duration_s) : null)],
  ["Tags", (t) => (t.tags && t.tags.length ? t.tags.join(", ") : null)],
  ["Dataset", (t) => t.dataset],
  ["Status", (t) => t.status],
  ["Snapshot", (t) => t.snapshot_version],
  ["Failed at", (t) => t.failure_stage],
  ["Why it failed", (t) => t.failure_reason],
  ["Added", (t) => (t.created_at ? new Date(t.created_at).toLocaleString() : null)],
  ["Track id", (t) => t.track_id],
];

// The recommendation parameters a route carries, so "go on" from a pick keeps the listener's choice.
export function recommendParams(search) {
  const given = new URLSearchParams(search);
  const strategy = STRATEGIES[given.get("strategy")] ? given.get("strategy") : "similar";
  const params = { strategy, k: given.get("k") || "10" };
  for (const name of [...STRATEGIES[strategy].params, ...WEIGHTS.map((w) => `w-${w}`)]) {
    if (given.get(name)) params[name] = given.get(name);
  }
  return params;
}

function apiParams(params) {
  const wanted = STRATEGIES[params.strategy].params;
  const out = { k: params.k, strategy: params.strategy };
  for (const name of ["pool", "lambda", "floor", "seed"]) if (wanted.includes(name) && params[name]) out[name] = params[name];
  if (wanted.includes("weights")) {
    const weights = WEIGHTS.filter((w) => params[`w-${w}`]).map((w) => `${w}:${params[`w-${w}`]}`);
    if (weights.length) out.weights = weights.join(",");
  }
  return out;
}

export class TrackView {
  constructor(root, trackId, search) {
    this.root = root;
    this.trackId = trackId;
    this.node = clone("track-template");
    this.audio = this.node.querySelector(".t-audio");
    this.play = this.node.querySelector(".t-play");
    this.time = this.node.querySelector(".t-time");
    this.canvas = this.node.querySelector(".t-wave");
    this.form = this.node.querySelector(".r-form");
    this.waveform = null;
    this.blobUrl = null;
    this.recommendations = null;
    this.disposed = false;
    root.replaceChildren(this.node);
    this.wirePlayer();
    this.form.addEventListener("change", (event) => {
      if (event.target.name === "strategy") this.showParams(event.target.value);
    });
    this.form.addEventListener("submit", (event) => {
      event.preventDefault();
      const data = new FormData(this.form);
      const params = {};
      for (const [name, value] of data.entries()) if (String(value).trim()) params[name] = String(value).trim();
      location.hash = `#/track/${encodeURIComponent(this.trackId)}${query(recommendParams(query(params)))}`;
    });
    this.loadTrack();
    this.loadAudio();
    this.loadWaveform();
    this.update(search);
  }

  heading() {
    return this.node.querySelector(".t-title");
  }

  dispose() {
    this.disposed = true;
    this.audio.pause();
    if (this.waveform) this.waveform.dispose();
    if (this.recommendations) this.recommendations.abort();
    if (this.blobUrl) URL.revokeObjectURL(this.blobUrl);
  }

  wirePlayer() {
    const audio = this.audio;
    const showTime = () => {
      this.time.textContent = `${clock(audio.currentTime)} / ${clock(audio.duration)}`;
    };
    const showState = () => {
      this.play.textContent = audio.paused ? "Play" : "Pause";
    };
    audio.addEventListener("timeupdate", showTime);
    audio.addEventListener("loadedmetadata", showTime);
    audio.addEventListener("play", showState);
    audio.addEventListener("pause", showState);
    audio.addEventListener("ended", showState);
    audio.addEventListener("error", () => this.note(".t-audio-note", "The audio of this track cannot be played."));
    this.play.addEventListener("click", () => {
      if (audio.paused) {
        audio.play().catch(() => this.note(".t-audio-note", "The browser refused to play this audio."));
      } else {
        audio.pause();
      }
    });
  }

  note(selector, text) {
    const node = this.node.querySelector(selector);
    node.textContent = text;
    node.hidden = !text;
  }

  async loadTrack() {
    const title = this.heading();
    title.textContent = this.trackId;
    let track;
    try {
      track = await getJson(`/tracks/${encodeURIComponent(this.trackId)}`);
    } catch (error) {
      if (!this.disposed) this.node.querySelector(".t-sub").textContent = `Could not load this track: ${describe(error)}`;
      return;
    }
    if (this.disposed) return;
    title.textContent = track.title || track.track_id;
    this.node.querySelector(".t-sub").textContent = [track.composer, track.work, track.performer].filter(Boolean).join(" · ");
    this.node.querySelector(".t-status").replaceWith(statusBadge(track.status));
    const list = this.node.querySelector(".t-meta");
    for (const [label, read] of META) {
      const value = read(track);
      if (value === null || value === undefined || value === "") continue;
      list.append(el("dt", { text: label }), el("dd", { text: value }));
    }
  }

  // Without a key the <audio> element streams /audio itself, seeking by HTTP Range. An element
  // cannot send X-API-Key, so with a key the file is fetched with it and played from a blob.
  async loadAudio() {
    const path = `/audio/${encodeURIComponent(this.trackId)}`;
    if (!apiKey()) {
      this.audio.src = path;
      return;
    }
    try {
      const blob = await getBlob(path);
      if (this.disposed) return;
      this.blobUrl = URL.createObjectURL(blob);
      this.audio.src = this.blobUrl;
    } catch (error) {
      if (!this.disposed) this.note(".t-audio-note", `No audio: ${describe(error)}`);
    }
  }

  async loadWaveform() {
    let peaks;
    try {
      peaks = await getJson(`/waveform/${encodeURIComponent(this.trackId)}`);
    } catch (error) {
      if (this.disposed) return;
      this.canvas.hidden = true;
      this.note(".t-wave-note", `No waveform: ${describe(error)}`);
      return;
    }
    if (this.disposed) return;
    this.waveform = new Waveform(this.canvas, this.audio, peaks);
  }

  showParams(strategy) {
    const wanted = STRATEGIES[strategy].params;
    for (const node of this.form.querySelectorAll("[data-param]")) node.hidden = !wanted.includes(node.dataset.param);
    this.form.querySelector(".r-help").textContent = STRATEGIES[strategy].help;
  }

  // Called again when only the recommendation parameters of the route change.
  async update(search) {
    const params = recommendParams(search);
    for (const [name, value] of Object.entries(params)) {
      const input = this.form.elements.namedItem(name);
      if (input) input.value = value;
    }
    this.showParams(params.strategy);
    const summary = this.node.querySelector(".r-summary");
    const list = this.node.querySelector(".r-list");
    if (this.recommendations) this.recommendations.abort();
    const controller = new AbortController();
    this.recommendations = controller;
    summary.textContent = "Finding recommendations…";
    list.replaceChildren();
    let body;
    try {
      body = await getJson(`/recommend/${encodeURIComponent(this.trackId)}${query(apiParams(params))}`, {
        signal: controller.signal,
      });
    } catch (error) {
      if (controller.signal.aborted) return;
      summary.textContent = `No recommendations: ${describe(error)}`;
      return;
    }
    const carried = query(params);
    list.replaceChildren(...body.recommendations.map((pick) => pickItem(pick, carried)));
    summary.textContent = answerSummary(body);
  }
}
