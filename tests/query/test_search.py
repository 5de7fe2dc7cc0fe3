"""``POST /search`` by vector and by several tracks, and filters on ``/search`` and ``/recommend``.

The query service runs in-process on this test's real Postgres, Redis, S3 and
broker, serving a snapshot of the seeded catalogue; every filtered answer is
checked against brute force over the same vectors and metadata. Search by
clip, which needs the embedder, is tested in tests/system/test_search_by_clip.py.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from mess.runtime.endpoints import StackSettings

from .conftest import Catalogue, RunningQuery, StartQuery, apply_registry, insert_tracks
from .snapshot_writer import SnapshotWriter

DIM = 16


def _metadata(position: int) -> dict[str, Any]:
    """Spread over the catalogue so that every filter cuts across the vector families."""
    return {
        "duration_s": 30.0 + 10.0 * (position % 7),
        "year": 1700 + 25 * (position % 9),
        "tags": [["organ"], ["piano", "live"], ["strings"], ["Piano"], []][position % 5],
        "dataset": "smd" if position % 3 == 0 else "demo",
    }


def _rows(catalogue: Catalogue) -> list[dict[str, Any]]:
    return [{**row, **_metadata(i)} for i, row in enumerate(catalogue.rows)]


def _matches(row: dict[str, Any], filters: dict[str, Any]) -> bool:
    """The filters' meaning, written independently of the service's SQL."""
    for name in ("composer", "era"):
        if name in filters and str(row.get(name) or "").lower() != filters[name].lower():
            return False
    if "dataset" in filters and row["dataset"] != filters["dataset"]:
        return False
    if "tags" in filters:
        have = {t.lower() for t in row["tags"]}
        wanted = {t.lower() for t in filters["tags"]}
        if filters.get("tags_match") == "all" and not wanted <= have:
            return False
        if filters.get("tags_match", "any") == "any" and not wanted & have:
            return False
    if "min_duration_s" in filters and row["duration_s"] < filters["min_duration_s"]:
        return False
    if "max_duration_s" in filters and row["duration_s"] > filters["max_duration_s"]:
        return False
    if "min_year" in filters and row["year"] < filters["min_year"]:
        return False
    return not ("max_year" in filters and row["year"] > filters["max_year"])


def brute_force(
    catalogue: Catalogue, query: np.ndarray, filters: dict[str, Any], k: int, exclude: frozenset[str] = frozenset()
) -> list[str]:
    rows = _rows(catalogue)
    scores = catalogue.vectors @ query
    order = np.argsort(-scores, kind="stable")
    return [catalogue.ids[i] for i in order if catalogue.ids[i] not in exclude and _matches(rows[i], filters)][:k]


@pytest.fixture
async def searchable(
    stack: StackSettings, start_query: StartQuery, writer: SnapshotWriter, catalogue: Catalogue
) -> Callable[..., Any]:
    """Starts the service (with the given settings) on snapshot 1 of the catalogue and its metadata."""
    await apply_registry(stack)
    await insert_tracks(stack, _rows(catalogue))
    manifest = writer.write(1, catalogue.shards(2), dim=DIM)

    def start(**overrides: Any) -> Any:
        class Started:
            async def __aenter__(self) -> RunningQuery:
                self._context = start_query(**overrides)
                query = await self._context.__aenter__()
                await query.wait_for_version(manifest.version)
                return query

            async def __aexit__(self, *exc: object) -> None:
                await self._context.__aexit__(*exc)

        return Started()

    return start


FILTERS = [
    {"composer": "bach"},
    {"era": "ROMANTIC", "min_duration_s": 50},
    {"tags": ["piano"], "tags_match": "any"},
    {"tags": ["piano", "live"], "tags_match": "all"},
    {"dataset": "smd", "min_year": 1750, "max_year": 1850},
    {"max_duration_s": 45, "composer": "Mozart"},
]


@pytest.mark.parametrize("max_ids", [20_000, 3], ids=["exact-over-matches", "over-fetch"])
async def test_filtered_vector_search_agrees_with_brute_force(
    searchable: Callable[..., Any], catalogue: Catalogue, max_ids: int
) -> None:
    # max_ids 3: every filter matches more than 3 tracks, so each is searched by over-fetching instead.
    async with searchable(filter_max_ids=max_ids) as query:
        vector = catalogue.vectors[7]
        for filters in FILTERS:
            expected = brute_force(catalogue, vector, filters, 5)
            assert len(expected) == 5, filters  # the seeded catalogue has at least k matches for each
            response = await query.client.post("/search", json={"vector": vector.tolist(), "k": 5, "filters": filters})
            assert response.status_code == 200, response.text
            body = response.json()
            assert [r["track_id"] for r in body["recommendations"]] == expected, filters
            assert body["query"] == {"kind": "vector", "dim": DIM}
            assert body["shortfall"] is None
            counted = body["filters"]["matching_tracks"]
            if max_ids == 3:
                assert counted is None
            else:
                assert counted == sum(_matches(r, filters) for r in _rows(catalogue))


async def test_filtered_recommend_returns_k_matching_tracks_and_says_when_fewer_match(
    searchable: Callable[..., Any], catalogue: Catalogue
) -> None:
    reference = catalogue.ids[0]  # a Bach track: its nearest neighbours are Bach tracks
    async with searchable() as query:
        # Only Mozart: none of the reference's nearest neighbours, yet k come back.
        response = await query.client.get(f"/recommend/{reference}", params={"k": 6, "composer": "mozart"})
        assert response.status_code == 200, response.text
        body = response.json()
        mozart = brute_force(catalogue, catalogue.vectors[0], {"composer": "mozart"}, 6, frozenset({reference}))
        assert [r["track_id"] for r in body["recommendations"]] == mozart
        assert all(r["composer"] == "Mozart" for r in body["recommendations"])
        assert body["filters"]["criteria"] == {"composer": "mozart"}

        # Tags repeated or comma-separated are one filter; only 3 tracks (of 60) are in smd with tag "live"
        # and year 1700..1725: fewer than k, and the answer says so.
        narrow = {"dataset": "smd", "tags": "live,organ", "max_year": 1725}
        response = await query.client.get(f"/recommend/{reference}", params={"k": 10, **narrow})
        body = response.json()
        wanted = {"dataset": "smd", "tags": ["live", "organ"], "max_year": 1725}
        expected = brute_force(catalogue, catalogue.vectors[0], wanted, 10, frozenset({reference}))
        assert 0 < len(expected) < 10
        assert [r["track_id"] for r in body["recommendations"]] == expected
        assert body["shortfall"] is not None and f"only {len(expected)} " in body["shortfall"]

        # The unfiltered answer is not the filtered one served from the cache: filters are in the key.
        plain = (await query.client.get(f"/recommend/{reference}", params={"k": 6})).json()
        assert [r["track_id"] for r in plain["recommendations"]] == catalogue.expected_neighbours(reference, 6)
        again = await query.client.get(f"/recommend/{reference}", params={"k": 6, "composer": "MOZART "})
        assert again.headers["X-Cache"] == "hit"  # one spelling of one filter, one cache entry
        assert [r["track_id"] for r in again.json()["recommendations"]] == mozart

        bad = await query.client.get(f"/recommend/{reference}", params={"min_year": 1900, "max_year": 1800})
        assert bad.status_code == 422


async def test_vector_search_finds_the_track_and_refuses_bad_vectors(
    searchable: Callable[..., Any], catalogue: Catalogue
) -> None:
    async with searchable() as query:
        response = await query.client.post("/search", json={"vector": catalogue.vectors[3].tolist(), "k": 3})
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["recommendations"][0]["track_id"] == catalogue.ids[3]
        assert body["reference_track"] is None
        assert body["recommendations"][0]["similarity_score"] == pytest.approx(1.0, abs=1e-4)

        wrong_dim = await query.client.post("/search", json={"vector": [0.1] * (DIM + 1)})
        assert wrong_dim.status_code == 422
        assert "16" in wrong_dim.text
        not_finite = await query.client.post(
            "/search",
            content=b'{"vector": [NaN' + b", 0.1" * (DIM - 1) + b"]}",
            headers={"Content-Type": "application/json"},
        )
        assert not_finite.status_code == 422
        zeros = await query.client.post("/search", json={"vector": [0.0] * DIM})
        assert zeros.status_code == 422
        both = await query.client.post("/search", json={"vector": [0.1] * DIM, "positive": [catalogue.ids[0]]})
        assert both.status_code == 422
        text = await query.client.post("/search", content=b"hello", headers={"Content-Type": "text/plain"})
        assert text.status_code == 415


async def test_positive_and_negative_tracks_steer_the_search(
    searchable: Callable[..., Any], catalogue: Catalogue
) -> None:
    positive = catalogue.ids[0]  # family 0
    negative = catalogue.ids[15]  # family 1
    async with searchable() as query:
        alone = (await query.client.post("/search", json={"positive": [positive], "k": 59})).json()
        order = [r["track_id"] for r in alone["recommendations"]]
        assert order == catalogue.expected_neighbours(positive, 59)
        assert alone["query"]["kind"] == "tracks"
        negatives_neighbours = set(catalogue.expected_neighbours(negative, 10)) - {positive}

        def closer(track_id: str) -> bool:
            vector = catalogue.vectors[catalogue.ids.index(track_id)]
            return bool(vector @ catalogue.vectors[15] > vector @ catalogue.vectors[0])

        for combine in ("average", "best_score"):
            steered = await query.client.post(
                "/search", json={"positive": [positive], "negative": [negative], "combine": combine, "k": 58}
            )
            assert steered.status_code == 200, steered.text
            ranks = {r["track_id"]: r["rank"] for r in steered.json()["recommendations"]}
            assert positive not in ranks and negative not in ranks  # the references are never recommended
            if combine == "average":
                # Every close neighbour of the negative ranks lower than it did without the negative.
                pushed_down = {t for t in negatives_neighbours if ranks[t] > order.index(t) + 1}
                assert pushed_down == negatives_neighbours
            else:
                # Every track nearer the negative ranks below every track nearer the positive.
                nearer_negative = [ranks[t] for t in ranks if closer(t)]
                nearer_positive = [ranks[t] for t in ranks if not closer(t)]
                assert len(nearer_negative) >= 10
                assert min(nearer_negative) > max(nearer_positive)

        best = await query.client.post(
            "/search",
            json={"positive": [catalogue.ids[0], catalogue.ids[30]], "combine": "best_score", "k": 4},
        )
        picked = [r["track_id"] for r in best.json()["recommendations"]]
        # Two positives kept apart: each candidate is scored by its nearer positive (brute force agrees).
        nearest = np.maximum(catalogue.vectors @ catalogue.vectors[0], catalogue.vectors @ catalogue.vectors[30])
        ranked = [catalogue.ids[i] for i in np.argsort(-nearest, kind="stable") if i not in (0, 30)]
        assert picked == ranked[:4]

        unknown = await query.client.post("/search", json={"positive": ["no-such-track"]})
        assert unknown.status_code == 404
        same = await query.client.post("/search", json={"positive": [positive], "negative": [positive]})
        assert same.status_code == 422


async def test_clip_search_answers_503_with_retry_after_when_the_embedder_is_down(
    searchable: Callable[..., Any],
) -> None:
    from mess.dev.stack import free_port

    async with searchable(embedder_url=f"http://127.0.0.1:{free_port()}", embedder_timeout_s=2.0) as query:
        response = await query.client.post(
            "/search", files={"clip": ("clip.wav", b"RIFF" + bytes(100), "audio/wav")}, data={"k": "3"}
        )
        assert response.status_code == 503, response.text
        assert response.headers["Retry-After"].isdigit()

        too_large = await query.client.post(
            "/search", files={"clip": ("clip.wav", bytes(2048), "audio/wav")}, data={"k": "3"}
        )
        assert too_large.status_code == 503  # under the default cap: it went to the (absent) embedder
    async with searchable(clip_max_bytes=1024) as query:
        too_large = await query.client.post("/search", files={"clip": ("clip.wav", bytes(2048), "audio/wav")})
        assert too_large.status_code == 413
        not_audio = await query.client.post("/search", files={"clip": ("notes.txt", b"hello", "text/plain")})
        assert not_audio.status_code == 415
        unknown_field = await query.client.post(
            "/search", files={"clip": ("clip.wav", b"RIFF", "audio/wav")}, data={"colour": "red"}
        )
        assert unknown_field.status_code == 422
