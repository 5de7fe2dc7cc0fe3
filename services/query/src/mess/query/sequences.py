"""A snapshot shard's pitch sequences, verified and memory-mapped for the version re-rank.

The indexer writes each shard's sequences as two .npy arrays
(``mess.contracts.storage.ShardSequences``): every row's frames one after
another, and the offsets where each row begins. Both are memory-mapped, so
the page cache holds them once however many snapshots share the shard, and a
query touches only the pages of the K tracks it aligns.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from mess.contracts.sequences import check_sequence_table

PitchSequence = npt.NDArray[np.uint8]


@dataclass(frozen=True, eq=False)
class ShardSequenceTable:
    """Row r's sequence is ``frames[offsets[r]:offsets[r + 1]]``; an empty row has none."""

    frames: npt.NDArray[np.uint8]
    offsets: npt.NDArray[np.int64]

    def of(self, row: int) -> PitchSequence | None:
        start, end = int(self.offsets[row]), int(self.offsets[row + 1])
        if end <= start:
            return None
        return self.frames[start:end]


def open_sequence_table(frames: Path, offsets: Path, rows: int) -> ShardSequenceTable:
    """Memory-map and check a shard's table (ValueError when a reader could not slice it safely).

    The files' sha256 were verified when they were downloaded; this checks what
    a checksum cannot: that the offsets fit these frames and this shard's rows."""
    frame_array = np.load(frames, mmap_mode="r", allow_pickle=False)
    # The offsets are 8 bytes a row and every one is read by the check: loaded, not mapped.
    offset_array = np.load(offsets, allow_pickle=False)
    check_sequence_table(frame_array, offset_array, rows)
    return ShardSequenceTable(frames=frame_array, offsets=offset_array)
