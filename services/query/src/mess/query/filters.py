"""Track filters for ``/search`` and ``/recommend``: what a listener may narrow a search to, defined once.

A filter is applied inside the search, never by dropping results afterwards,
so ``k`` results come back whenever ``k`` matching tracks exist
(``mess.query.recommender``). The predicate is written once, as SQL over the
track registry, and used both ways the search needs it: "every matching id"
(bounded by a limit) and "which of these candidates match".

``canonical()`` is the filter as the cache key and the answer carry it: text
trimmed and lower-cased (matching is case-insensitive), tags sorted and
deduplicated, unset fields left out, so two spellings of one filter share
one cache entry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

MAX_TAGS = 20


@dataclass(frozen=True)
class FilterLimits:
    """What a filter may cost: tracks searched exactly by id, and candidates over-fetched for a broad filter."""

    max_ids: int = 20_000
    max_fetch: int = 20_000


class TrackFilters(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, frozen=True)

    composer: str | None = Field(default=None, max_length=200, description="composer, case-insensitive")
    era: str | None = Field(default=None, max_length=100, description="era, case-insensitive")
    dataset: str | None = Field(default=None, max_length=100, description="dataset the track came from")
    tags: list[str] | None = Field(default=None, max_length=MAX_TAGS, description="tags, case-insensitive")
    tags_match: Literal["any", "all"] = Field(default="any", description="a track needs any, or all, of the tags")
    min_duration_s: float | None = Field(default=None, ge=0, description="shortest duration, inclusive")
    max_duration_s: float | None = Field(default=None, ge=0, description="longest duration, inclusive")
    min_year: int | None = Field(default=None, ge=0, le=9999, description="earliest year, inclusive")
    max_year: int | None = Field(default=None, ge=0, le=9999, description="latest year, inclusive")

    @model_validator(mode="after")
    def _ranges(self) -> Self:
        low, high = self.min_duration_s, self.max_duration_s
        if low is not None and high is not None and low > high:
            raise ValueError("min_duration_s exceeds max_duration_s")
        if self.min_year is not None and self.max_year is not None and self.min_year > self.max_year:
            raise ValueError("min_year exceeds max_year")
        for tag in self.tags or []:
            if not tag.strip() or len(tag) > 100:
                raise ValueError("a tag is 1 to 100 characters")
        return self

    @property
    def empty(self) -> bool:
        return not self.canonical()

    def canonical(self) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for name in ("composer", "era"):
            text = getattr(self, name)
            if text is not None and text.strip():
                values[name] = text.strip().lower()
        # Dataset names are identifiers (demo, smd, upload): matched exactly, so its index serves.
        if self.dataset is not None and self.dataset.strip():
            values["dataset"] = self.dataset.strip()
        tags = sorted({t.strip().lower() for t in self.tags or [] if t.strip()})
        if tags:
            values["tags"] = tags
            values["tags_match"] = self.tags_match
        for name in ("min_duration_s", "max_duration_s", "min_year", "max_year"):
            value = getattr(self, name)
            if value is not None:
                values[name] = value
        return values

    def sql(self, arg: Callable[[object], str]) -> list[str]:
        """WHERE clauses over ``tracks`` (values bound through ``arg``); removed tracks never match."""
        given = self.canonical()
        clauses = ["status <> 'removed'"]
        for name in ("composer", "era"):
            if name in given:
                clauses.append(f"lower({name}) = {arg(given[name])}")
        if "dataset" in given:
            clauses.append(f"dataset = {arg(given['dataset'])}")
        if "tags" in given:
            # Tags are matched case-insensitively, as text would be.
            operator = "@>" if given["tags_match"] == "all" else "&&"
            tags = arg(given["tags"])
            clauses.append(f"ARRAY(SELECT lower(t) FROM unnest(tags) AS t) {operator} {tags}::text[]")  # noqa: S608
        if "min_duration_s" in given:
            clauses.append(f"duration_s >= {arg(float(given['min_duration_s']))}")
        if "max_duration_s" in given:
            clauses.append(f"duration_s <= {arg(float(given['max_duration_s']))}")
        if "min_year" in given:
            clauses.append(f"year >= {arg(given['min_year'])}")
        if "max_year" in given:
            clauses.append(f"year <= {arg(given['max_year'])}")
        return clauses
