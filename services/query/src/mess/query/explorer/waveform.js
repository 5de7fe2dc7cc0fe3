// The waveform of GET /waveform/{id} on a canvas: played part, playhead, click or keys to seek.

import { clock } from "./dom.js";

const STEP_S = 5;

export class Waveform {
  constructor(canvas, audio, peaks) {
    this.canvas = canvas;
    this.audio = audio;
    this.peaks = peaks;
    this.frame = 0;
    const colours = getComputedStyle(canvas);
    this.colour = {
      wave: colours.getPropertyValue("--wave").trim() || "#9aa7b8",
      played: colours.getPropertyValue("--wave-played").trim() || "#1f4e79",
      playhead: colours.getPropertyValue("--playhead").trim() || "#c2410c",
    };
    this.listeners = [
      [audio, "timeupdate", () => this.draw()],
      [audio, "seeked", () => this.draw()],
      [audio, "loadedmetadata", () => this.draw()],
      [audio, "play", () => this.animate()],
      [canvas, "click", (event) => this.seekTo(event.offsetX / canvas.clientWidth)],
      [canvas, "keydown", (event) => this.key(event)],
    ];
    for (const [target, type, handler] of this.listeners) target.addEventListener(type, handler);
    this.resize = new ResizeObserver(() => this.draw());
    this.resize.observe(canvas);
    this.draw();
  }

  dispose() {
    cancelAnimationFrame(this.frame);
    this.resize.disconnect();
    for (const [target, type, handler] of this.listeners) target.removeEventListener(type, handler);
  }

  duration() {
    const fromAudio = this.audio.duration;
    return Number.isFinite(fromAudio) && fromAudio > 0 ? fromAudio : this.peaks.duration_s;
  }

  seekTo(fraction) {
    const duration = this.duration();
    if (!(duration > 0)) return;
    this.audio.currentTime = Math.min(Math.max(fraction, 0), 1) * duration;
    this.draw();
  }

  key(event) {
    const duration = this.duration();
    if (!(duration > 0)) return;
    const now = this.audio.currentTime;
    const moves = {
      ArrowLeft: now - STEP_S,
      ArrowDown: now - STEP_S,
      ArrowRight: now + STEP_S,
      ArrowUp: now + STEP_S,
      PageDown: now - duration / 10,
      PageUp: now + duration / 10,
      Home: 0,
      End: duration,
    };
    if (!(event.key in moves)) return;
    event.preventDefault();
    this.seekTo(moves[event.key] / duration);
  }

  // While playing, the playhead moves every frame, not only at timeupdate (about 4 a second).
  animate() {
    cancelAnimationFrame(this.frame);
    const step = () => {
      this.draw();
      if (!this.audio.paused && !this.audio.ended) this.frame = requestAnimationFrame(step);
    };
    this.frame = requestAnimationFrame(step);
  }

  draw() {
    const canvas = this.canvas;
    const ratio = window.devicePixelRatio || 1;
    const width = Math.max(1, Math.round(canvas.clientWidth * ratio));
    const height = Math.max(1, Math.round(canvas.clientHeight * ratio));
    if (canvas.width !== width || canvas.height !== height) {
      canvas.width = width;
      canvas.height = height;
    }
    const context = canvas.getContext("2d");
    context.clearRect(0, 0, width, height);
    const { mins, maxs } = this.peaks;
    const count = Math.min(mins.length, maxs.length);
    const duration = this.duration();
    const fraction = duration > 0 ? Math.min(this.audio.currentTime / duration, 1) : 0;
    const middle = height / 2;
    const playedX = fraction * width;
    for (let x = 0; x < width && count > 0; x += 1) {
      // Each pixel column draws the extremes of the peaks it covers.
      const from = Math.floor((x / width) * count);
      const to = Math.max(from + 1, Math.floor(((x + 1) / width) * count));
      let low = 0;
      let high = 0;
      for (let i = from; i < to && i < count; i += 1) {
        low = Math.min(low, mins[i]);
        high = Math.max(high, maxs[i]);
      }
      context.fillStyle = x < playedX ? this.colour.played : this.colour.wave;
      const top = middle - Math.min(high, 1) * middle;
      const bottom = middle - Math.max(low, -1) * middle;
      context.fillRect(x, top, 1, Math.max(1, bottom - top));
    }
    context.fillStyle = this.colour.playhead;
    context.fillRect(Math.min(playedX, width - 2 * ratio), 0, 2 * ratio, height);
    canvas.dataset.playhead = fraction.toFixed(4);
    canvas.setAttribute("aria-valuenow", String(Math.round(fraction * 100)));
    canvas.setAttribute("aria-valuetext", `${clock(this.audio.currentTime)} of ${clock(duration)}`);
  }
}
