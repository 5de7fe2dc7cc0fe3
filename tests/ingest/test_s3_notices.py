"""Reading S3 event notifications and dropped objects' metadata (unit)."""

import json

import pytest

from mess.contracts.events import TrackMetadata
from mess.ingest.s3drop import (
    DropMetadataError,
    MalformedNoticeError,
    ObjectNotice,
    identity_of,
    parse_notice,
)


def notice(*keys: str, event: str = "ObjectCreated:Put") -> str:
    records = [
        {"eventName": event, "s3": {"bucket": {"name": "b"}, "object": {"key": key, "size": 1, "eTag": "abc"}}}
        for key in keys
    ]
    return json.dumps({"Records": records})


def test_keys_are_url_decoded() -> None:
    assert parse_notice(notice("drop/Bach+%26+Sons/Pr%C3%A9lude+1.wav")) == [
        ObjectNotice(bucket="b", key="drop/Bach & Sons/Prélude 1.wav", etag="abc")
    ]


def test_test_event_and_other_events_name_no_object() -> None:
    assert parse_notice(json.dumps({"Service": "Amazon S3", "Event": "s3:TestEvent", "Bucket": "b"})) == []
    assert parse_notice(notice("drop/a.wav", event="ObjectRemoved:Delete")) == []


@pytest.mark.parametrize(
    "body", ["", "not json", "[1, 2]", '{"Records": 3}', '{"Records": [{"eventName": "ObjectCreated:Put"}]}']
)
def test_malformed_notices_say_why(body: str) -> None:
    with pytest.raises(MalformedNoticeError):
        parse_notice(body)


def test_plain_objects_get_metadata_from_their_key() -> None:
    identity = identity_of("drop/romantic/chopin/Nocturne_Op9_No2.flac", "drop/", {})
    assert identity.dataset == "s3"
    assert identity.track_id is None
    assert identity.metadata == TrackMetadata(title="Nocturne Op9 No2", tags=["romantic", "chopin"])


def test_importer_metadata_wins() -> None:
    metadata = TrackMetadata(title="Étude", composer="Chopin", tags=["maestro"])
    identity = identity_of(
        "drop/maestro/2004/x.wav",
        "drop/",
        {
            "mess-dataset": "maestro",
            "mess-track-id": "maestro-2004-x-0123456789ab",
            "mess-metadata": json.dumps(metadata.model_dump(mode="json"), ensure_ascii=True),
        },
    )
    assert (identity.dataset, identity.track_id, identity.metadata) == (
        "maestro",
        "maestro-2004-x-0123456789ab",
        metadata,
    )


@pytest.mark.parametrize(
    "user_metadata",
    [
        {"mess-track-id": "UPPER CASE"},
        {"mess-metadata": "{"},
        {"mess-metadata": '{"year": "soon"}'},
        {"mess-dataset": "x" * 65},
    ],
)
def test_broken_importer_metadata_is_refused(user_metadata: dict[str, str]) -> None:
    with pytest.raises(DropMetadataError):
        identity_of("drop/a.wav", "drop/", user_metadata)
