"""Sorted id sets: which of a chunk's ids a folder already holds, by binary search."""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl


def is_member(candidates: pl.Series, sorted_ids: pl.Series) -> pl.Series:
    """Vectorised binary search: which ``candidates`` are in the sorted ``sorted_ids``."""
    if not len(sorted_ids) or not len(candidates):
        return pl.Series([False] * len(candidates), dtype=pl.Boolean())
    positions = sorted_ids.search_sorted(candidates, side="left").clip(0, len(sorted_ids) - 1)
    return (sorted_ids.gather(positions) == candidates).fill_null(False)


@dataclass(frozen=True, slots=True)
class DoneIds:
    """Ids a resumed run skips, sorted so a chunk is checked by binary search.

    A semi-join against millions of ids rebuilt its hash table per 256-row chunk
    (240 ms each: 90 minutes for a 6M-row resume); ``search_sorted`` takes 0.35 ms.
    """

    ids: pl.Series

    def __len__(self) -> int:
        return len(self.ids)

    def among(self, candidates: list[str]) -> set[str]:
        wanted = pl.Series("id", candidates, dtype=pl.String())
        return set(wanted.filter(is_member(wanted, self.ids)).to_list())
