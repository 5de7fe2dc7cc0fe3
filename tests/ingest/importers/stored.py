"""Reading back what an import left in the bucket."""

import json
from pathlib import Path
from typing import Any

from mess.contracts import TrackMetadata


def stored_objects(s3: Any, bucket: str, prefix: str) -> dict[str, dict[str, Any]]:
    """Key -> head_object of everything under ``prefix``."""
    objects: dict[str, dict[str, Any]] = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            objects[item["Key"]] = s3.head_object(Bucket=bucket, Key=item["Key"])
    return objects


def metadata_of(head: dict[str, Any]) -> TrackMetadata:
    return TrackMetadata.model_validate_json(head["Metadata"]["mess-metadata"])


def read_report(path: Path) -> dict[str, Any]:
    report: dict[str, Any] = json.loads(path.read_text())
    return report
