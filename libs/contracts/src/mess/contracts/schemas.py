"""JSON Schema export of the events and the backward-compatibility rule.

The checked-in schemas (``libs/contracts/schemas``) are what analytics teams
and other consumers code against. A model change is allowed only when every
message valid under the checked-in schema stays readable: no field removed or
renamed, no type narrowed or changed, no optional field made required, no new
required field, no enum value removed.
"""

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mess.contracts.topics import TOPIC_EVENTS

JsonSchema = dict[str, Any]


def current_schemas() -> dict[str, JsonSchema]:
    """topic -> JSON Schema of what producers put on that topic."""
    return {topic: model.model_json_schema(mode="serialization") for topic, model in TOPIC_EVENTS.items()}


def schema_filename(topic: str) -> str:
    return f"{topic}.schema.json"


def render(schema: JsonSchema) -> str:
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def export_schemas(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for topic, schema in current_schemas().items():
        path = directory / schema_filename(topic)
        path.write_text(render(schema), encoding="utf-8")
        written.append(path)
    return written


def load_schemas(directory: Path) -> dict[str, JsonSchema]:
    schemas = {}
    for topic in TOPIC_EVENTS:
        path = directory / schema_filename(topic)
        if path.exists():
            schemas[topic] = json.loads(path.read_text(encoding="utf-8"))
    return schemas


class _Resolver:
    def __init__(self, root: JsonSchema) -> None:
        self.defs: dict[str, JsonSchema] = root.get("$defs", {})

    def resolve(self, node: JsonSchema) -> JsonSchema:
        seen = set()
        while "$ref" in node:
            ref = node["$ref"]
            if ref in seen:
                raise ValueError(f"cyclic $ref {ref}")
            seen.add(ref)
            name = ref.rsplit("/", 1)[-1]
            merged = {k: v for k, v in node.items() if k != "$ref"}
            node = {**self.defs[name], **merged}
        return node


def _variants(node: JsonSchema, resolver: _Resolver) -> Iterator[JsonSchema]:
    node = resolver.resolve(node)
    alternatives = node.get("anyOf") or node.get("oneOf")
    if alternatives:
        for alternative in alternatives:
            yield from _variants(alternative, resolver)
        return
    yield node


def _type_of(node: JsonSchema) -> str:
    if "const" in node and "type" not in node:
        return type(node["const"]).__name__
    kind = node.get("type")
    if isinstance(kind, list):
        raise ValueError("type lists are not produced by pydantic; normalise the schema first")
    if kind is None:
        return "any"
    return str(kind)


def _accepts(new_type: str, old_type: str) -> bool:
    return new_type in ("any", old_type) or (new_type == "number" and old_type == "integer")


def breaking_changes(old: JsonSchema, new: JsonSchema) -> list[str]:
    """Why a consumer built on ``new`` could not read a message valid under ``old``."""
    problems: list[str] = []
    _compare(old, new, _Resolver(old), _Resolver(new), "$", problems)
    return problems


def _compare(
    old: JsonSchema, new: JsonSchema, old_r: _Resolver, new_r: _Resolver, path: str, problems: list[str]
) -> None:
    old_variants = list(_variants(old, old_r))
    new_variants = list(_variants(new, new_r))
    for old_variant in old_variants:
        old_type = _type_of(old_variant)
        matches = [v for v in new_variants if _accepts(_type_of(v), old_type)]
        if not matches:
            new_types = sorted({_type_of(v) for v in new_variants})
            problems.append(f"{path}: type changed from {old_type} to {'|'.join(new_types)}")
            continue
        same_type = [v for v in matches if _type_of(v) == old_type] or matches
        _compare_same_type(old_variant, same_type[0], old_r, new_r, path, problems)


def _compare_same_type(
    old: JsonSchema, new: JsonSchema, old_r: _Resolver, new_r: _Resolver, path: str, problems: list[str]
) -> None:
    for keyword in ("format", "contentEncoding", "pattern"):
        if keyword in new and new.get(keyword) != old.get(keyword):
            problems.append(f"{path}: {keyword} changed from {old.get(keyword)!r} to {new[keyword]!r}")
    if "enum" in new:
        removed = [v for v in old.get("enum", []) if v not in new["enum"]]
        if "enum" not in old or removed:
            problems.append(f"{path}: enum values removed: {removed or 'unrestricted before'}")
    if "const" in new and new.get("const") != old.get("const"):
        problems.append(f"{path}: const changed from {old.get('const')!r} to {new['const']!r}")
    old_props: dict[str, JsonSchema] = old.get("properties", {})
    new_props: dict[str, JsonSchema] = new.get("properties", {})
    for name, old_prop in old_props.items():
        if name not in new_props:
            problems.append(f"{path}.{name}: field removed or renamed")
            continue
        _compare(old_prop, new_props[name], old_r, new_r, f"{path}.{name}", problems)
    old_required = set(old.get("required", []))
    for name in sorted(set(new.get("required", [])) - old_required):
        if name in old_props:
            problems.append(f"{path}.{name}: optional field made required")
        else:
            problems.append(f"{path}.{name}: new field is required (new fields must be optional)")
    if "items" in old and "items" in new:
        _compare(old["items"], new["items"], old_r, new_r, f"{path}[]", problems)
    if isinstance(old.get("additionalProperties"), dict) and isinstance(new.get("additionalProperties"), dict):
        _compare(old["additionalProperties"], new["additionalProperties"], old_r, new_r, f"{path}{{}}", problems)


def check_directory(directory: Path) -> dict[str, list[str]]:
    """topic -> problems, comparing the checked-in schemas with the current models.

    A topic with no checked-in schema yet is new, not breaking; a checked-in
    topic that no model produces any more is breaking.
    """
    checked_in = load_schemas(directory)
    current = current_schemas()
    report: dict[str, list[str]] = {}
    for topic, old in checked_in.items():
        report[topic] = breaking_changes(old, current[topic]) if topic in current else ["topic removed"]
    for path in directory.glob("*.schema.json"):
        topic = path.name.removesuffix(".schema.json")
        if topic not in current:
            report[topic] = ["topic removed: no event model produces it any more"]
    return report
