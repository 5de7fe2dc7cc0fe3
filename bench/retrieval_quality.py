"""Version retrieval quality on works mess has never seen: MAP@10, P@1, hit@5, top-1 same instrument.

A set is ``--works`` music21 works drawn with ``--seed`` from corpus
collections the demo corpus and the tests do not use (Bach chorales past the
ones the demo draws, Palestrina mass movements past those, the Trecento
collection), each rendered three times by mess.corpus (music21 + fluidsynth):
a non-piano General MIDI instrument (three different ones per work), tempo
x0.85..1.15 and a transposition of -2..+2 semitones, up to ``--seconds``
seconds. Works whose render is shorter than half of that are skipped and the
next one drawn. Sets drawn with different seeds never share a work
(``--exclude-seeds`` names the sets to keep clear of), so one set can be used
to choose parameters and the others to report them.

Every rendition is the query once; its relevant items are the other
renditions of its work. Reported:

* ``first_stage``: cosine ranking of the track vectors alone (what FAISS
  returns);
* ``reranked``: the query service's second stage (mess.query.versions) over
  the first stage's top ``--candidates``;

``--mode offline`` (the default) calls the embedder backend and the re-rank
functions directly (the services' code paths, no broker, no database) and
also times the re-rank; ``--mode api`` runs the four services on a private
stack of the local backing services (``make stack``), uploads every rendition
and asks ``GET /recommend`` for each, so the figures are what a user gets.

Renders are cached under ``.mess/retrieval_quality/`` (gitignored); the first
run of a 40-work set renders 120 files (about two minutes on one core).

    .venv/bin/python bench/retrieval_quality.py --seed 101 --works 40          # the development set
    .venv/bin/python bench/retrieval_quality.py --seed 202 --exclude-seeds 101  # a report set
"""

import os

# The re-rank figure is per core: pin BLAS before numpy is imported.
for _variable in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import signal  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from types import FrameType  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import numpy.typing as npt  # noqa: E402

from mess.corpus import INSTRUMENTS, RenderError, Rendition, demo_works, render_to_file  # noqa: E402
from mess.corpus.render import _corpus_works  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".mess" / "retrieval_quality"
RENDER_RATE = 22050
RENDER_TIMEOUT_S = 60
# Every work any test or the demo (up to 150 works) renders; kept out of every set.
TEST_WORKS = frozenset(
    {
        "bach/bwv1.6",
        "bach/bwv10.7",
        "bach/bwv115.6",
        "bach/bwv127.5",
        "bach/bwv133.6",
        "corelli/opus3no1/1grave",
        "monteverdi/madrigal.3.18",
        "palestrina/Agnus",
    }
)
PLAYERS = tuple(name for name in INSTRUMENTS if name != "piano")


@dataclass(frozen=True)
class Track:
    work: str
    rendition: Rendition
    path: Path


def candidate_pool() -> list[str]:
    excluded = set(demo_works(150)) | TEST_WORKS
    pool = _corpus_works("bach") + _corpus_works("palestrina") + _corpus_works("trecento")
    return [work for work in pool if work not in excluded]


def _draw_order(seed: int) -> list[str]:
    pool = candidate_pool()
    order = np.random.default_rng(seed).permutation(len(pool))
    return [pool[i] for i in order]


def renditions_of(work: str, seed: int) -> list[Rendition]:
    """Three renditions of one work, drawn from (seed, work) so that a set is reproducible."""
    rng = np.random.default_rng([seed, sum(work.encode())])
    players = rng.choice(len(PLAYERS), size=3, replace=False)
    out = []
    for player in players:
        scale = round(float(rng.uniform(0.85, 1.15)), 2)
        shift = int(rng.integers(-2, 3))
        out.append(Rendition(work=work, tempo_scale=scale, transpose=shift, instrument=PLAYERS[int(player)]))
    return out


class _RenderTimeoutError(RuntimeError):
    pass


def _on_alarm(signum: int, frame: FrameType | None) -> None:
    raise _RenderTimeoutError


def _render_cached(rendition: Rendition, seconds: float) -> Path | None:
    CACHE.mkdir(parents=True, exist_ok=True)
    path = CACHE / f"{rendition.name}-{int(seconds)}s.wav"
    failed = path.with_suffix(".failed")
    if path.exists():
        return path
    if failed.exists():
        return None
    signal.signal(signal.SIGALRM, _on_alarm)
    signal.alarm(RENDER_TIMEOUT_S)
    try:
        render_to_file(rendition, path.with_suffix(".tmp.wav"), sample_rate=RENDER_RATE, max_seconds=seconds)
    except (RenderError, _RenderTimeoutError, Exception) as exc:
        failed.write_text(f"{type(exc).__name__}: {exc}")
        return None
    finally:
        signal.alarm(0)
    path.with_suffix(".tmp.wav").rename(path)
    return path


def draw_set(seed: int, works: int, seconds: float, exclude_seeds: list[int]) -> list[Track]:
    """``works`` works x 3 renditions, rendering what is not cached yet."""
    # Each excluded set is drawn as it was reported: clear of the ones named before it.
    excluded: set[str] = set()
    for position, other in enumerate(exclude_seeds):
        excluded |= {track.work for track in draw_set(other, works, seconds, exclude_seeds[:position])}
    import soundfile as sf

    tracks: list[Track] = []
    chosen = 0
    for work in _draw_order(seed):
        if chosen >= works:
            break
        if work in excluded:
            continue
        paths = []
        for rendition in renditions_of(work, seed):
            path = _render_cached(rendition, seconds)
            if path is None or sf.info(str(path)).duration < seconds / 2:
                break
            paths.append((rendition, path))
        if len(paths) < 3:
            continue
        tracks.extend(Track(work=work, rendition=r, path=p) for r, p in paths)
        chosen += 1
    return tracks


# --- metrics -----------------------------------------------------------------------


def metrics(tracks: list[Track], rankings: list[list[int]]) -> dict[str, float]:
    """MAP@10, P@1, hit@5 and top-1 same-instrument rate; ``rankings[q]`` excludes q itself."""
    aps, p1, hit5, same = [], [], [], []
    for query, order in enumerate(rankings):
        relevant = {i for i, t in enumerate(tracks) if t.work == tracks[query].work and i != query}
        hits, precision_sum = 0, 0.0
        for rank, item in enumerate(order[:10], start=1):
            if item in relevant:
                hits += 1
                precision_sum += hits / rank
        aps.append(precision_sum / min(len(relevant), 10))
        p1.append(float(order[0] in relevant))
        hit5.append(float(any(item in relevant for item in order[:5])))
        same.append(float(tracks[order[0]].rendition.instrument == tracks[query].rendition.instrument))
    return {
        "map_at_10": float(np.mean(aps)),
        "p_at_1": float(np.mean(p1)),
        "hit_at_5": float(np.mean(hit5)),
        "top1_same_instrument": float(np.mean(same)),
    }


def same_work_flags(tracks: list[Track], recognised: list[set[int]]) -> dict[str, float]:
    """How far the API's ``alignment.same_work`` can be believed: of the candidates it marks, the share
    that are versions (precision), and of the versions among the K aligned, the share it marks (recall)."""
    marked = sum(len(found) for found in recognised)
    right = sum(1 for q, found in enumerate(recognised) for i in found if tracks[i].work == tracks[q].work)
    versions = sum(2 for _ in recognised)  # every work has three renditions: two versions per query
    return {
        "marked_per_query": marked / max(1, len(recognised)),
        "precision": right / max(1, marked),
        "recall_of_all_versions": right / max(1, versions),
    }


# --- live mode: the real services, through the public API ------------------------------


def rank_live(tracks: list[Track], k: int = 10) -> tuple[list[list[int]], list[list[int]]]:
    """Upload every rendition to a private pipeline (ingest, embedder, indexer, query as processes on
    the local stack's backing services), wait until all are indexed and served, then ask ``/recommend``
    (strategy ``similar``) for each: (rankings, positions the answer marked ``same_work``)."""
    import asyncio
    import tempfile

    import asyncpg
    import httpx

    from mess.dev import stack as local
    from mess.dev.faults import upload_rendition
    from mess.dev.pipeline import Pipeline
    from mess.runtime.endpoints import StackSettings

    key = "retrieval-quality-bench"
    position: dict[str, int] = {}
    with local.private_stack(StackSettings(), "rq") as stack, tempfile.TemporaryDirectory() as scratch:
        extra = {
            "MESS_INGEST_API_KEYS": key,
            "MESS_EMBEDDER_BACKEND": "dsp",
            "MESS_EMBEDDER_GROUP_ID": f"{stack.topic_prefix}mess-embedder",
            "MESS_INDEXER_GROUP_ID": f"{stack.topic_prefix}mess-indexer",
            "MESS_INGEST_STATUS_GROUP_ID": f"{stack.topic_prefix}mess-ingest-status",
            "MESS_INDEXER_SNAPSHOT_INTERVAL_S": "2",
            "MESS_QUERY_SNAPSHOT_CACHE_DIR": str(Path(scratch) / "snapshots"),
            "MESS_QUERY_SNAPSHOT_POLL_S": "2",
            "MESS_QUERY_CACHE_ENABLED": "false",
            "MESS_INGEST_WRITE_RATE_PER_S": "1000",
            "MESS_INGEST_WRITE_BURST": "1000",
        }
        with Pipeline(local.stack_env(stack), Path(scratch) / "logs", extra) as pipeline:
            pipeline.start()
            ingest, query = pipeline["ingest"].url, pipeline["query"].url
            for number, track in enumerate(tracks):
                answer = upload_rendition(ingest, key, track.rendition, track.path, "retrieval-quality", timeout_s=120)
                answer.raise_for_status()
                position[answer.json()["track_id"]] = number

            async def indexed() -> int:
                connection = await asyncpg.connect(
                    stack.postgres_dsn, server_settings={"search_path": stack.postgres_schema}
                )
                try:
                    return int(await connection.fetchval("SELECT count(*) FROM tracks WHERE status = 'indexed'"))
                finally:
                    await connection.close()

            local.wait_for(lambda: asyncio.run(indexed()) == len(tracks), "every rendition indexed", timeout=1800)
            ids = {number: track_id for track_id, number in position.items()}

            def served() -> bool:
                probe = httpx.get(f"{query}/recommend/{ids[0]}", params={"k": k}, timeout=30)
                return probe.status_code == 200 and len(probe.json()["recommendations"]) == k

            local.wait_for(served, "the query service serving the full snapshot", timeout=300)
            rankings, marked = [], []
            for number in range(len(tracks)):
                body = httpx.get(f"{query}/recommend/{ids[number]}", params={"k": k}, timeout=30).json()
                picks = body["recommendations"]
                rankings.append([position[p["track_id"]] for p in picks])
                marked.append(
                    [position[p["track_id"]] for p in picks if p.get("alignment") and p["alignment"]["same_work"]]
                )
    return rankings, marked


# --- offline mode ---------------------------------------------------------------------


def embed_offline(tracks: list[Track]) -> tuple[npt.NDArray[np.float32], list[npt.NDArray[np.uint8]], str]:
    """Track vectors and pitch sequences through the embedder's own prepare/embed/pool path."""
    from concurrent.futures import ThreadPoolExecutor

    from mess.embedder.audio import AudioLimits, pool_chunks
    from mess.embedder.backends.dsp import DspBackend
    from mess.embedder.batching import ChunkBatcher
    from mess.embedder.embedding import ChunkPlan, TrackEmbedder

    backend = DspBackend()
    vectors, sequences = [], []
    with ThreadPoolExecutor(1) as pool:
        plan = ChunkPlan(backend.default_chunk_seconds, backend.default_chunk_seconds)
        embedder = TrackEmbedder(backend, ChunkBatcher(backend, pool, 8, 0.0), pool, plan, AudioLimits())
        for track in tracks:
            prepared = embedder.prepare(track.path.stem, track.path.read_bytes(), None)
            chunk_vectors = backend.embed_chunks(prepared.chunks.audio, prepared.chunks.lengths)
            pooled = pool_chunks(chunk_vectors, prepared.chunks.weights)
            vectors.append(backend.track_vector(pooled, prepared.pitch_sequence))
            sequences.append(prepared.pitch_sequence)
    return np.array(vectors, dtype=np.float32), sequences, f"{backend.name}@{backend.revision}"


def rank_offline(
    vectors: npt.NDArray[np.float32],
    sequences: list[npt.NDArray[np.uint8]],
    candidates: int,
    rerank: bool,
    timings: list[tuple[float, float]] | None = None,
    recognised: list[set[int]] | None = None,
) -> list[list[int]]:
    from mess.query.versions import VersionMatcher

    matcher = VersionMatcher()
    similarity = vectors @ vectors.T
    np.fill_diagonal(similarity, -np.inf)
    rankings = []
    for query in range(vectors.shape[0]):
        order = [int(i) for i in np.argsort(-similarity[query], kind="stable")[: vectors.shape[0] - 1]]
        if rerank:
            head = order[:candidates]
            began, began_cpu = time.perf_counter(), time.thread_time()
            versions = matcher.rerank(sequences[query], [sequences[i] for i in head])
            if timings is not None:
                # Wall time and this thread's CPU time: on a shared machine the
                # second is what "one core" costs, the first what a caller waited.
                timings.append((time.perf_counter() - began, time.thread_time() - began_cpu))
            if recognised is not None:
                recognised.append({head[i] for i, match in versions.versions.items() if match.same_work})
            order = [head[i] for i in versions.order] + order[candidates:]
        rankings.append(order)
    return rankings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=101)
    parser.add_argument("--works", type=int, default=40)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--exclude-seeds", type=int, nargs="*", default=[])
    parser.add_argument("--candidates", type=int, default=50, help="K: how many first-stage results are re-ranked")
    parser.add_argument("--render-only", action="store_true")
    parser.add_argument(
        "--mode",
        choices=["offline", "api"],
        default="offline",
        help="offline: the embedder's and re-rank's functions; api: the four services on a private stack, "
        "through /recommend (needs the local stack: make stack)",
    )
    parser.add_argument("--out", type=Path, default=None, help="JSON results file (default bench/results/...)")
    args = parser.parse_args()

    began = time.perf_counter()
    tracks = draw_set(args.seed, args.works, args.seconds, args.exclude_seeds)
    print(f"set seed={args.seed}: {len(tracks) // 3} works x 3 renditions ready in {time.perf_counter() - began:.0f} s")
    if args.render_only:
        return

    if args.mode == "api":
        began = time.perf_counter()
        rankings, marked = rank_live(tracks)
        live: dict[str, Any] = {
            "seed": args.seed,
            "exclude_seeds": args.exclude_seeds,
            "mode": "api",
            "works": sorted({t.work for t in tracks}),
            "tracks": len(tracks),
            "served": metrics(tracks, rankings),
            "same_work_flag": same_work_flags(tracks, [set(m) for m in marked]),
            "seconds": round(time.perf_counter() - began, 1),
        }
        row = live["served"]
        print(
            f"through /recommend: MAP@10 {row['map_at_10']:.3f}, P@1 {row['p_at_1']:.3f}, hit@5 {row['hit_at_5']:.3f},"
            f" top-1 same instrument {row['top1_same_instrument']:.3f} ({live['seconds']:.0f} s)"
        )
        out = args.out or ROOT / "bench" / "results" / f"retrieval_quality_api_seed{args.seed}.json"
        out.write_text(json.dumps(live, indent=2) + "\n")
        print(f"wrote {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")
        return

    began = time.perf_counter()
    vectors, sequences, model = embed_offline(tracks)
    print(f"embedded {len(tracks)} tracks with {model} in {time.perf_counter() - began:.1f} s")
    timings: list[tuple[float, float]] = []
    first = metrics(tracks, rank_offline(vectors, sequences, args.candidates, rerank=False))
    recognised: list[set[int]] = []
    second = metrics(
        tracks,
        rank_offline(vectors, sequences, args.candidates, rerank=True, timings=timings, recognised=recognised),
    )
    wall_ms = np.array([wall for wall, _ in timings]) * 1000
    cpu_ms = np.array([cpu for _, cpu in timings]) * 1000
    result: dict[str, Any] = {
        "seed": args.seed,
        "exclude_seeds": args.exclude_seeds,
        "works": sorted({t.work for t in tracks}),
        "tracks": len(tracks),
        "mean_seconds": float(np.mean([s.shape[0] for s in sequences])),
        "model": model,
        "candidates": args.candidates,
        "first_stage": first,
        "reranked": second,
        "same_work_flag": same_work_flags(tracks, recognised),
        "rerank_ms": {
            "cpu_p50": float(np.percentile(cpu_ms, 50)),
            "cpu_p99": float(np.percentile(cpu_ms, 99)),
            "wall_p50": float(np.percentile(wall_ms, 50)),
            "wall_p99": float(np.percentile(wall_ms, 99)),
        },
    }
    print(f"{'':<12} {'MAP@10':>7} {'P@1':>6} {'hit@5':>6} {'top1 same instr':>16}")
    for name in ("first_stage", "reranked"):
        row = result[name]
        print(
            f"{name:<12} {row['map_at_10']:>7.3f} {row['p_at_1']:>6.3f} {row['hit_at_5']:>6.3f}"
            f" {row['top1_same_instrument']:>16.3f}"
        )
    flags = result["same_work_flag"]
    print(
        f"same_work flag: {flags['marked_per_query']:.2f} marked per query, precision {flags['precision']:.3f},"
        f" recall {flags['recall_of_all_versions']:.3f}"
    )
    took = result["rerank_ms"]
    print(
        f"re-rank of K={args.candidates}, one thread: CPU p50 {took['cpu_p50']:.2f} ms, p99 {took['cpu_p99']:.2f} ms;"
        f" wall p50 {took['wall_p50']:.2f} ms, p99 {took['wall_p99']:.2f} ms"
    )
    out = args.out or ROOT / "bench" / "results" / f"retrieval_quality_seed{args.seed}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")


if __name__ == "__main__":
    main()
