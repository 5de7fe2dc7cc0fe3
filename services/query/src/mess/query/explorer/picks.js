// One list item per recommended track: who it is, its scores, why it was picked, and a link to go on.

import { el, statusBadge, trackHref } from "./dom.js";

function number(value, digits = 3) {
  return typeof value === "number" && Number.isFinite(value) ? value.toFixed(digits) : "–";
}

function alignmentText(alignment) {
  if (!alignment) return null;
  const parts = [`alignment ${number(alignment.score, 2)}`];
  const shift = alignment.key_shift_semitones;
  if (typeof shift === "number" && shift !== 0) parts.push(`${shift > 0 ? "+" : ""}${shift} semitone${Math.abs(shift) === 1 ? "" : "s"}`);
  if (typeof alignment.tempo_ratio === "number") parts.push(`tempo ×${number(alignment.tempo_ratio, 2)}`);
  if (typeof alignment.aligned_seconds === "number") parts.push(`${Math.round(alignment.aligned_seconds)} s aligned`);
  return parts.join(", ");
}

export function pickItem(pick, params = "") {
  const sameWork = Boolean(pick.alignment && pick.alignment.same_work === true);
  const who = [pick.composer, pick.work, pick.performer, pick.dataset].filter(Boolean).join(" · ");
  const scores = [`similarity ${number(pick.similarity_score)}`, `strategy score ${number(pick.strategy_score)}`];
  const aligned = alignmentText(pick.alignment);
  if (aligned) scores.push(aligned);
  return el(
    "li",
    { class: sameWork ? "same-work" : null, "data-track-id": pick.track_id },
    el("a", { href: trackHref(pick.track_id, params), text: pick.title || pick.track_id }),
    " ",
    sameWork ? el("span", { class: "badge same-work", text: "same work" }) : null,
    " ",
    statusBadge(pick.status),
    who ? el("p", { class: "who", text: who }) : null,
    el("p", { class: "scores", text: scores.join(" · ") }),
    pick.explanation ? el("p", { class: "why", text: pick.explanation }) : null,
  );
}

export function answerSummary(body) {
  const parts = [`${body.recommendations.length} pick${body.recommendations.length === 1 ? "" : "s"}`];
  if (body.algorithm) parts.push(`by ${body.algorithm}`);
  if (body.snapshot_version) parts.push(`snapshot ${body.snapshot_version}`);
  const versions = body.recommendations.filter((p) => p.alignment && p.alignment.same_work === true).length;
  if (versions) parts.push(`${versions} version${versions === 1 ? "" : "s"} of the same work`);
  if (body.cached) parts.push("cached");
  if (typeof body.computation_time_ms === "number") parts.push(`${Math.round(body.computation_time_ms)} ms`);
  let text = parts.join(", ") + ".";
  if (body.degraded) text += " The track registry is unavailable: picks come without titles.";
  return text;
}
