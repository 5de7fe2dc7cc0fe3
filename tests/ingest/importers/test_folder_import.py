"""`mess-import folder` against the real S3 endpoint: tags from folders, resume, multipart, notices."""

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import unquote_plus

import boto3
import pytest
import soundfile as sf

from mess.ingest.importers.drop import DropBucket
from mess.ingest.importers.folder import list_folder
from mess.ingest.importers.run import ImportInterrupted, Outcome, TrackOutcome, import_listing
from mess.runtime.endpoints import StackSettings

from .stored import metadata_of, stored_objects

FILES = [
    "jazz/miles/so what.flac",
    "jazz/miles/blue in green.ogg",
    "piano/chopin/nocturne.mp3",
    "piano/scale.wav",
    "loose.wav",
]


def build_music_folder(root: Path, write_tone: Callable[..., Path]) -> None:
    for index, name in enumerate(FILES):
        write_tone(root / name, seconds=1.2, hz=200.0 + 50 * index)
    write_tone(root / "piano" / "._scale.wav", seconds=1.0)  # a macOS resource fork beside the real file
    write_tone(root / ".trash" / "deleted.wav", seconds=1.0)
    (root / "jazz" / "cover.jpg").write_bytes(b"\xff\xd8\xff")


def test_folder_import_tags_from_folders_and_title_from_stem(
    stack: StackSettings, drop: DropBucket, s3: Any, tmp_path: Path, write_tone: Callable[..., Path]
) -> None:
    build_music_folder(tmp_path / "music", write_tone)

    report = import_listing(list_folder(tmp_path / "music", "mine"), drop, quiet=True)

    assert (report.uploaded, report.skipped, report.failed, report.ignored) == (5, 0, 0, 2)
    objects = stored_objects(s3, stack.bucket, stack.drop_prefix)
    assert set(objects) == {f"{stack.drop_prefix}mine/{name}" for name in FILES}
    so_what = objects[f"{stack.drop_prefix}mine/jazz/miles/so what.flac"]
    assert metadata_of(so_what).title == "so what"
    assert metadata_of(so_what).tags == ["jazz", "miles"]
    assert so_what["ContentType"] == "audio/flac"
    assert so_what["Metadata"]["mess-dataset"] == "mine"
    assert metadata_of(objects[f"{stack.drop_prefix}mine/loose.wav"]).tags == []
    assert objects[f"{stack.drop_prefix}mine/piano/chopin/nocturne.mp3"]["ContentType"] == "audio/mpeg"


def test_import_resumes_after_a_simulated_interrupt(
    stack: StackSettings, drop: DropBucket, s3: Any, tmp_path: Path, write_tone: Callable[..., Path]
) -> None:
    build_music_folder(tmp_path / "music", write_tone)
    listing = list_folder(tmp_path / "music")
    seen: list[TrackOutcome] = []

    def ctrl_c_after_two(result: TrackOutcome) -> None:
        seen.append(result)
        if len(seen) == 2:
            raise KeyboardInterrupt

    with pytest.raises(ImportInterrupted) as stopped:
        import_listing(listing, drop, jobs=1, quiet=True, listener=ctrl_c_after_two)

    partial = stopped.value.report
    present = stored_objects(s3, stack.bucket, stack.drop_prefix)
    # With one worker, at most the upload under way when Ctrl-C came finishes after it.
    assert 2 <= len(present) == partial.uploaded < len(FILES)

    resumed = import_listing(listing, drop, jobs=2, quiet=True)

    assert (resumed.uploaded, resumed.skipped, resumed.failed) == (len(FILES) - partial.uploaded, partial.uploaded, 0)
    assert len(stored_objects(s3, stack.bucket, stack.drop_prefix)) == len(FILES)


def test_an_object_that_differs_in_size_or_metadata_is_uploaded_again(
    stack: StackSettings, drop: DropBucket, s3: Any, tmp_path: Path, write_tone: Callable[..., Path]
) -> None:
    build_music_folder(tmp_path / "music", write_tone)
    listing = list_folder(tmp_path / "music")
    import_listing(listing, drop, quiet=True)
    stale = f"{stack.drop_prefix}folder/loose.wav"
    s3.put_object(Bucket=stack.bucket, Key=stale, Body=b"an older, shorter file", Metadata={"mess-dataset": "folder"})
    relabelled = f"{stack.drop_prefix}folder/piano/scale.wav"
    s3.copy_object(
        Bucket=stack.bucket,
        Key=relabelled,
        CopySource={"Bucket": stack.bucket, "Key": relabelled},
        Metadata={"mess-dataset": "folder", "mess-track-id": "x", "mess-metadata": "{}"},
        MetadataDirective="REPLACE",
    )

    report = import_listing(listing, drop, quiet=True)

    assert (report.uploaded, report.skipped) == (2, len(FILES) - 2)
    restored = s3.head_object(Bucket=stack.bucket, Key=stale)
    assert restored["ContentLength"] == (tmp_path / "music" / "loose.wav").stat().st_size
    assert metadata_of(s3.head_object(Bucket=stack.bucket, Key=relabelled)).tags == ["piano"]


def test_large_file_goes_up_in_parts_with_its_metadata(
    stack: StackSettings, s3: Any, tmp_path: Path, write_tone: Callable[..., Path]
) -> None:
    # 5 MB is S3's smallest part; a 7 MB WAV then needs two parts.
    drop = DropBucket.connect(stack, multipart_threshold=5 * 1024 * 1024, multipart_chunk=5 * 1024 * 1024)
    big = write_tone(tmp_path / "long" / "take.wav", seconds=40.0, rate=44100, channels=2)
    assert big.stat().st_size > 7_000_000

    report = import_listing(list_folder(tmp_path / "long"), drop, quiet=True)

    assert report.uploaded == 1
    key = f"{stack.drop_prefix}folder/take.wav"
    head = s3.head_object(Bucket=stack.bucket, Key=key)
    assert head["ETag"].strip('"').endswith("-2"), "uploaded as a two-part multipart upload"
    assert head["Metadata"]["mess-dataset"] == "folder"
    assert metadata_of(head).title == "take"
    downloaded = tmp_path / "back.wav"
    s3.download_file(stack.bucket, key, str(downloaded))
    assert downloaded.read_bytes() == big.read_bytes()
    assert sf.info(str(downloaded)).duration == pytest.approx(40.0)


def test_imported_objects_raise_the_notices_the_s3_worker_listens_to(
    stack: StackSettings, drop: DropBucket, tmp_path: Path, write_tone: Callable[..., Path]
) -> None:
    build_music_folder(tmp_path / "music", write_tone)
    import_listing(list_folder(tmp_path / "music"), drop, quiet=True)
    kwargs: dict[str, Any] = stack.s3_client_kwargs()
    sqs = boto3.client("sqs", **kwargs)
    queue = sqs.get_queue_url(QueueName=stack.sqs_queue)["QueueUrl"]

    noticed: set[str] = set()
    for _ in range(10):
        received = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10, WaitTimeSeconds=1)
        for message in received.get("Messages", []):
            for record in json.loads(message["Body"]).get("Records", []):
                if record["eventName"].startswith("ObjectCreated:"):
                    noticed.add(unquote_plus(record["s3"]["object"]["key"]))
        if len(noticed) >= len(FILES):
            break

    assert noticed == {f"{stack.drop_prefix}folder/{name}" for name in FILES}


def test_outcomes_are_one_per_file(
    stack: StackSettings, drop: DropBucket, tmp_path: Path, write_tone: Callable[..., Path]
) -> None:
    build_music_folder(tmp_path / "music", write_tone)
    (tmp_path / "music" / "broken.flac").write_bytes(b"fLaC" + b"\x00" * 64)
    outcomes: list[TrackOutcome] = []

    report = import_listing(list_folder(tmp_path / "music"), drop, quiet=True, listener=outcomes.append)

    assert sorted(o.track.relative_path for o in outcomes) == sorted([*FILES, "broken.flac"])
    assert [o.track.relative_path for o in outcomes if o.outcome is Outcome.FAILED] == ["broken.flac"]
    assert report.failures[0].reason.startswith("not decodable audio")
