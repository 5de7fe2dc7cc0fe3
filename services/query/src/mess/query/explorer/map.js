// The map: GET /map's 2D projection of the catalog, coloured by composer or dataset.

import { describe } from "./errors.js";
import { getJson } from "./api.js";
import { clone, el, trackHref } from "./dom.js";

// Distinct on white and for the common colour-vision deficiencies (Okabe–Ito, then Tableau).
const PALETTE = [
  "#0072b2", "#e69f00", "#009e73", "#cc79a7", "#d55e00", "#56b4e9",
  "#8c564b", "#f0c808", "#4e79a7", "#b07aa1", "#59a14f", "#e15759",
];
const OTHER = "#9ca3af";
const UNKNOWN = "#d1d5db";
const RADIUS = 3;
const HIT = 8;
const PAD = 12;

// One fetch per page load: the answer only changes with the snapshot (and is revalidated by ETag).
let cached = null;

export class MapView {
  constructor(root) {
    this.node = clone("map-template");
    root.replaceChildren(this.node);
    this.canvas = this.node.querySelector(".m-canvas");
    this.tip = this.node.querySelector(".m-tip");
    this.colourBy = this.node.querySelector(".m-colour");
    this.summary = this.node.querySelector(".m-summary");
    this.data = null;
    this.screen = null;
    this.focused = -1;
    this.disposed = false;
    this.colourBy.addEventListener("change", () => this.draw());
    this.canvas.addEventListener("click", (event) => this.open(this.nearest(event.offsetX, event.offsetY)));
    this.canvas.addEventListener("mousemove", (event) => this.hover(this.nearest(event.offsetX, event.offsetY)));
    this.canvas.addEventListener("mouseleave", () => this.hover(-1));
    this.canvas.addEventListener("keydown", (event) => this.key(event));
    this.canvas.addEventListener("blur", () => this.hover(-1));
    this.resize = new ResizeObserver(() => this.draw());
    this.resize.observe(this.canvas);
    this.load();
  }

  heading() {
    return this.node.querySelector(".m-title");
  }

  dispose() {
    this.disposed = true;
    this.resize.disconnect();
  }

  async load() {
    this.summary.textContent = "Drawing the map…";
    try {
      const data = await getJson("/map");
      if (!cached || cached.snapshot_version !== data.snapshot_version || data.degraded === false) cached = data;
    } catch (error) {
      if (!this.disposed) this.summary.textContent = `No map: ${describe(error)}`;
      if (!cached) return;
    }
    if (this.disposed) return;
    this.data = cached;
    const points = this.data.points;
    // Keyboard order: left to right, so the arrow keys sweep across the picture.
    this.order = points.x.map((_, i) => i).sort((a, b) => points.x[a] - points.x[b] || points.y[a] - points.y[b]);
    const [ex, ey] = this.data.explained_variance;
    this.summary.textContent =
      `${this.data.sampled} of ${this.data.vector_count} tracks in snapshot ${this.data.snapshot_version}, ` +
      `by PCA (the axes hold ${Math.round(ex * 100)}% and ${Math.round(ey * 100)}% of the variance).` +
      (this.data.degraded ? " The track registry is unavailable, so points are not coloured." : "");
    this.draw();
  }

  colourOf(index, labels) {
    if (index === null || index === undefined) return UNKNOWN;
    return index < PALETTE.length && index < labels.length ? PALETTE[index] : OTHER;
  }

  draw() {
    if (!this.data) return;
    const canvas = this.canvas;
    const ratio = window.devicePixelRatio || 1;
    const width = Math.max(1, Math.round(canvas.clientWidth * ratio));
    const height = Math.max(1, Math.round(canvas.clientHeight * ratio));
    if (canvas.width !== width || canvas.height !== height) {
      canvas.width = width;
      canvas.height = height;
    }
    const { x, y } = this.data.points;
    const by = this.colourBy.value;
    const labels = this.data.labels[by];
    const groups = this.data.points[by];
    const [minX, maxX] = [Math.min(...x), Math.max(...x)];
    const [minY, maxY] = [Math.min(...y), Math.max(...y)];
    const cssWidth = canvas.clientWidth;
    const cssHeight = canvas.clientHeight;
    const scaleX = (cssWidth - 2 * PAD) / (maxX - minX || 1);
    const scaleY = (cssHeight - 2 * PAD) / (maxY - minY || 1);
    // Screen positions in CSS pixels (what mouse events report); y grows upwards on the map.
    this.screen = x.map((value, i) => [PAD + (value - minX) * scaleX, cssHeight - PAD - (y[i] - minY) * scaleY]);
    const context = canvas.getContext("2d");
    context.setTransform(ratio, 0, 0, ratio, 0, 0);
    context.clearRect(0, 0, cssWidth, cssHeight);
    this.screen.forEach(([px, py], i) => {
      context.fillStyle = this.colourOf(groups[i], labels);
      context.beginPath();
      context.arc(px, py, RADIUS, 0, 2 * Math.PI);
      context.fill();
    });
    if (this.focused >= 0) {
      const [px, py] = this.screen[this.focused];
      context.strokeStyle = "#111827";
      context.lineWidth = 2;
      context.beginPath();
      context.arc(px, py, RADIUS + 3, 0, 2 * Math.PI);
      context.stroke();
    }
    canvas.dataset.points = String(this.screen.length);
    this.legend(labels, groups);
  }

  legend(labels, groups) {
    const items = labels.slice(0, PALETTE.length).map((label, i) => this.swatch(PALETTE[i], label));
    if (labels.length > PALETTE.length) items.push(this.swatch(OTHER, `${labels.length - PALETTE.length} more`));
    if (groups.some((g) => g === null)) items.push(this.swatch(UNKNOWN, "unknown"));
    this.node.querySelector(".m-legend").replaceChildren(...items);
  }

  swatch(colour, label) {
    const dot = el("span", { class: "swatch", "aria-hidden": "true" });
    dot.style.backgroundColor = colour; // CSSOM, which the CSP allows (unlike a style attribute)
    return el("li", {}, dot, label);
  }

  nearest(px, py) {
    if (!this.screen) return -1;
    let best = -1;
    let bestDistance = HIT * HIT;
    this.screen.forEach(([sx, sy], i) => {
      const distance = (sx - px) ** 2 + (sy - py) ** 2;
      if (distance <= bestDistance) {
        best = i;
        bestDistance = distance;
      }
    });
    return best;
  }

  describePoint(i) {
    const by = this.colourBy.value;
    const group = this.data.points[by][i];
    const label = group === null || group === undefined ? `${by} unknown` : this.data.labels[by][group];
    return `${this.data.points.track_id[i]} — ${label}`;
  }

  hover(i) {
    this.canvas.classList.toggle("over-point", i >= 0);
    if (i < 0) {
      this.tip.hidden = true;
      return;
    }
    const [px, py] = this.screen[i];
    this.tip.textContent = this.describePoint(i);
    this.tip.hidden = false;
    this.tip.style.left = `${Math.min(px + 10, Math.max(0, this.canvas.clientWidth - this.tip.offsetWidth))}px`;
    this.tip.style.top = `${py + 10}px`;
  }

  open(i) {
    if (i >= 0) location.hash = trackHref(this.data.points.track_id[i]);
  }

  key(event) {
    if (!this.data || !this.order.length) return;
    const at = this.order.indexOf(this.focused);
    const moves = { ArrowRight: 1, ArrowDown: 1, ArrowLeft: -1, ArrowUp: -1, PageDown: 10, PageUp: -10 };
    if (event.key in moves) {
      event.preventDefault();
      const next = at < 0 ? 0 : Math.min(Math.max(at + moves[event.key], 0), this.order.length - 1);
      this.focused = this.order[next];
      this.draw();
      this.hover(this.focused);
      this.summary.textContent = this.describePoint(this.focused);
    } else if (event.key === "Enter" && this.focused >= 0) {
      event.preventDefault();
      this.open(this.focused);
    }
  }
}
