"""Create every mess topic that is missing, with explicit partitions and configs; check those that exist.

The deployments' one topic-provisioning step (the Kubernetes Job of
``deploy/k8s/components/kafka-topics`` and the ``kafka-topics`` service of
docker-compose.yml). It runs in the indexer's image, mounted from a ConfigMap
or a bind mount: that image holds ``mess.runtime`` and ``mess.contracts`` (but
not ``tools/dev``), so the script connects exactly as the services do (every
``MESS_KAFKA_*`` setting through ``mess.runtime.kafka``: PLAINTEXT, TLS, SCRAM,
AWS MSK IAM) and takes the topic names from the one place that names them.

    python create_topics.py --replication-factor 3 --min-insync-replicas 2

Idempotent: a topic that exists is left as it is, but checked. Exit status 1
when a topic that exists cannot serve mess (the embeddings topic without
compaction, or fewer partitions than asked), so that an auto-created topic is
noticed before anything relies on it; 0 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from dataclasses import dataclass, field
from typing import Any

from aiokafka.admin import NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaError

from mess.contracts import topics as names
from mess.runtime import kafka
from mess.runtime.endpoints import StackSettings

log = logging.getLogger("mess.create_topics")

DAY_MS = 24 * 3600 * 1000

# Retention per topic (ms; -1 keeps everything). Ordering never rests on record
# timestamps (the registry's sequence header orders one track's facts), so the
# topics keep the broker's default timestamp type.
RETENTION_MS: dict[str, int] = {
    # Consumed within minutes; the reconciler re-announces whatever was missed.
    names.TRACKS_ADDED: 7 * DAY_MS,
    # A rebuild replays this topic from its start together with the embeddings:
    # a removal that aged out would bring the track back.
    names.TRACKS_REMOVED: -1,
    # Dead letters are read by people, days later.
    names.TRACKS_FAILED: 14 * DAY_MS,
    # The query service seeks to the end and falls back to LATEST in S3.
    names.INDEX_SNAPSHOTS: 7 * DAY_MS,
    # Analytics consumers keep their own copy.
    names.RECOMMENDATIONS_SERVED: 7 * DAY_MS,
}


@dataclass(frozen=True)
class TopicPlan:
    name: str
    partitions: int
    replication_factor: int
    configs: dict[str, str] = field(default_factory=dict)


def plan(stack: StackSettings, replication_factor: int, min_insync_replicas: int | None = None) -> list[TopicPlan]:
    """Every topic mess uses, as it should be created."""
    topics = stack.topics
    planned = []
    for base in names.TOPIC_EVENTS:
        name = topics.prefix + base
        configs: dict[str, str] = {}
        if topics.is_compacted(name):
            # The latest vector per track is the state every index is rebuilt
            # from: compaction keeps it for ever, deletion would lose it.
            configs["cleanup.policy"] = "compact"
        else:
            configs["cleanup.policy"] = "delete"
            configs["retention.ms"] = str(RETENTION_MS[base])
        if min_insync_replicas is not None:
            # With acks=all, a write succeeds only once this many replicas have it.
            configs["min.insync.replicas"] = str(min_insync_replicas)
        planned.append(TopicPlan(name, stack.topic_partitions, replication_factor, configs))
    return planned


def problems_of_existing(wanted: TopicPlan, partitions: int, configs: dict[str, str]) -> list[str]:
    """Why an existing topic cannot serve mess as planned (empty: it can)."""
    problems = []
    if partitions < wanted.partitions:
        # Adding partitions by hand moves keys to other partitions, which breaks
        # per-track ordering for events in flight: an operator's decision.
        problems.append(f"{wanted.name} has {partitions} partitions, {wanted.partitions} wanted")
    if wanted.configs.get("cleanup.policy") == "compact" and "compact" not in configs.get("cleanup.policy", ""):
        problems.append(
            f"{wanted.name} has cleanup.policy={configs.get('cleanup.policy', '?')}, compact wanted: "
            "it holds every vector; set it with kafka-configs --alter before anything is deleted"
        )
    return problems


def _config_entries(response: Any) -> dict[str, dict[str, str]]:
    """{topic: {config: value}} from DescribeConfigs responses (any protocol version)."""
    found: dict[str, dict[str, str]] = {}
    for answer in response:
        for resource in answer.resources:
            error_code, _, _, resource_name, entries = resource[:5]
            if error_code == 0:
                found[resource_name] = {entry[0]: entry[1] for entry in entries if entry[1] is not None}
    return found


async def provision(stack: StackSettings, planned: list[TopicPlan], timeout_ms: int) -> list[str]:
    """Create what is missing and check what exists; returns the problems."""
    admin = kafka.admin(stack, client_id="mess-create-topics", request_timeout_ms=timeout_ms)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [topic for topic in planned if topic.name not in existing]
        if missing:
            await admin.create_topics(
                [NewTopic(t.name, t.partitions, t.replication_factor, topic_configs=t.configs) for t in missing],
                timeout_ms=timeout_ms,
            )
            for topic in missing:
                log.info("created %s (%d partitions, %s)", topic.name, topic.partitions, topic.configs)
        present = [topic for topic in planned if topic.name in existing]
        if not present:
            return []
        described = {
            d["topic"]: len(d.get("partitions", [])) for d in await admin.describe_topics([t.name for t in present])
        }
        try:
            configs = _config_entries(
                await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, t.name) for t in present])
            )
        except KafkaError as exc:
            log.warning("cannot read topic configs (%s); checking partitions only", exc)
            configs = {}
        problems = []
        for topic in present:
            found = problems_of_existing(topic, described.get(topic.name, 0), configs.get(topic.name, topic.configs))
            problems += found
            if not found:
                log.info("exists: %s", topic.name)
        return problems
    finally:
        await admin.close()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--replication-factor", type=int, default=3, help="1 for a single broker")
    parser.add_argument("--min-insync-replicas", type=int, default=None, help="unset: the broker's default")
    parser.add_argument("--timeout-ms", type=int, default=30000)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    stack = StackSettings()
    planned = plan(stack, args.replication_factor, args.min_insync_replicas)
    problems = asyncio.run(provision(stack, planned, args.timeout_ms))
    for problem in problems:
        log.error("%s", problem)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
