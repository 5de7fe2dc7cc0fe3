"""Any folder tree of audio files: the folders a file sits in become its tags.

People sort music into folders by what matters to them (``jazz/miles/``,
``piano/chopin/``), so those names are the best metadata a plain folder has;
the title is the file's stem. This is the same guess the S3 worker makes for
an object dropped without metadata, so a file imported here and the same
file dropped by hand describe themselves alike.
"""

import os
from pathlib import Path

from mess.contracts import TrackMetadata
from mess.ingest.importers.dataset import (
    DatasetListing,
    DatasetTrack,
    check_dataset_name,
    existing_folder,
    is_audio_name,
)

DATASET = "folder"


def folder_metadata(relative: Path) -> TrackMetadata:
    tags = [part.strip() for part in relative.parts[:-1] if part.strip()]
    return TrackMetadata(title=relative.stem, tags=list(dict.fromkeys(tags)))


def list_folder(root: Path, dataset: str = DATASET) -> DatasetListing:
    """Every audio file under ``root``, hidden files and folders left out; symlinked folders are not followed."""
    listing = DatasetListing(dataset=check_dataset_name(dataset))
    for folder, dirs, files in os.walk(existing_folder(root)):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if not is_audio_name(name):
                listing.ignored += 1
                continue
            path = Path(folder) / name
            relative = path.relative_to(root)
            listing.tracks.append(
                DatasetTrack(
                    dataset=listing.dataset,
                    relative_path=relative.as_posix(),
                    metadata=folder_metadata(relative),
                    source=path,
                )
            )
    return listing
