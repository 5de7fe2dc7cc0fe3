"""An analytics team's view of mess: a plain aiokafka consumer, no mess code.

Reads `mess.recommendations.served.v1` and `mess.tracks.added.v1` and prints,
every few seconds, the most recommended tracks, the strategies in use, the
cache hit rate and the ingest rate. The message formats are the JSON Schemas
in `libs/contracts/schemas/` (one file per topic); every message is a JSON
object with `event_id`, `occurred_at` and `schema_version`, and fields are only
ever added, so ignore what you do not know.

    pip install aiokafka
    python examples/analytics_consumer.py --bootstrap 127.0.0.1:9092 --from-beginning

Use your own `--group` so your offsets are yours; Ctrl-C stops it cleanly.

On a secured cluster, give the same settings any Kafka client takes, for
example SASL/SCRAM over TLS (the password comes from the environment, never
the command line):

    KAFKA_SASL_PASSWORD=... python examples/analytics_consumer.py --bootstrap b-1.msk:9096 \
        --security-protocol SASL_SSL --sasl-mechanism SCRAM-SHA-512 --sasl-username analytics \
        --ca-file /etc/ssl/certs/ca-certificates.crt
"""

import argparse
import asyncio
import contextlib
import json
import os
import signal
import ssl
import time
from collections import Counter, deque
from typing import Any

from aiokafka import AIOKafkaConsumer

SERVED = "mess.recommendations.served.v1"
ADDED = "mess.tracks.added.v1"


class RunningCounts:
    def __init__(self, window_s: float = 60.0) -> None:
        self.recommended: Counter[str] = Counter()
        self.strategies: Counter[str] = Counter()
        self.requests = 0
        self.cached = 0
        self.latency_ms: deque[float] = deque(maxlen=10_000)
        self.tracks_added = 0
        self.datasets: Counter[str] = Counter()
        self.window_s = window_s
        self.recent_adds: deque[float] = deque()
        self.skipped = 0

    def on_served(self, event: dict[str, object]) -> None:
        self.requests += 1
        self.cached += bool(event.get("cached"))
        request = event.get("request")
        if isinstance(request, dict):
            self.strategies[str(request.get("strategy"))] += 1
        results = event.get("results")
        for item in results if isinstance(results, list) else []:
            if isinstance(item, dict) and "track_id" in item:
                self.recommended[str(item["track_id"])] += 1
        latency = event.get("latency_ms")
        if isinstance(latency, (int, float)):
            self.latency_ms.append(float(latency))

    def on_added(self, event: dict[str, object], now: float) -> None:
        self.tracks_added += 1
        self.datasets[str(event.get("dataset"))] += 1
        self.recent_adds.append(now)

    def ingest_rate(self, now: float) -> float:
        while self.recent_adds and self.recent_adds[0] < now - self.window_s:
            self.recent_adds.popleft()
        return len(self.recent_adds) / self.window_s

    def report(self, now: float, top: int) -> str:
        lines = [f"--- {time.strftime('%H:%M:%S')} ---"]
        lines.append(
            f"tracks added: {self.tracks_added} ({self.ingest_rate(now) * 60:.1f}/min over the last "
            f"{self.window_s:.0f}s)  by dataset: {dict(self.datasets.most_common(5))}"
        )
        hit_rate = self.cached / self.requests if self.requests else 0.0
        latencies = sorted(self.latency_ms)
        p50 = latencies[len(latencies) // 2] if latencies else 0.0
        lines.append(
            f"recommendations served: {self.requests}  cache hit rate {hit_rate:.0%}  p50 latency {p50:.1f} ms  "
            f"strategies {dict(self.strategies)}"
        )
        for rank, (track_id, count) in enumerate(self.recommended.most_common(top), start=1):
            lines.append(f"  {rank:>2}. {track_id}  recommended {count}x")
        if self.skipped:
            lines.append(f"  ({self.skipped} messages were not JSON objects and were skipped)")
        return "\n".join(lines)


async def caught_up(consumer: AIOKafkaConsumer) -> bool:
    assigned = consumer.assignment()
    if not assigned:
        return False
    ends = await consumer.end_offsets(list(assigned))
    for partition in assigned:
        if await consumer.position(partition) < ends[partition]:
            return False
    return True


def security_options(args: argparse.Namespace) -> dict[str, Any]:
    """aiokafka's TLS and SASL keyword arguments from the command line and KAFKA_SASL_PASSWORD."""
    options: dict[str, Any] = {"security_protocol": args.security_protocol}
    if args.security_protocol in {"SSL", "SASL_SSL"}:
        options["ssl_context"] = ssl.create_default_context(cafile=args.ca_file)
    if args.security_protocol.startswith("SASL_"):
        options.update(
            sasl_mechanism=args.sasl_mechanism,
            sasl_plain_username=args.sasl_username,
            sasl_plain_password=os.environ.get("KAFKA_SASL_PASSWORD", ""),
        )
    return options


async def run(args: argparse.Namespace) -> None:
    consumer = AIOKafkaConsumer(
        args.prefix + SERVED,
        args.prefix + ADDED,
        **security_options(args),
        bootstrap_servers=args.bootstrap,
        group_id=args.group,
        auto_offset_reset="earliest" if args.from_beginning else "latest",
        enable_auto_commit=True,
    )
    counts = RunningCounts()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await consumer.start()
    last_report = 0.0
    try:
        while not stop.is_set():
            batches = await consumer.getmany(timeout_ms=500, max_records=1000)
            now = time.time()
            for records in batches.values():
                for record in records:
                    try:
                        event = json.loads(record.value)
                    except (TypeError, ValueError):
                        counts.skipped += 1
                        continue
                    if not isinstance(event, dict):
                        counts.skipped += 1
                    elif record.topic.endswith(SERVED):
                        counts.on_served(event)
                    else:
                        counts.on_added(event, now)
            if now - last_report >= args.interval:
                print(counts.report(now, args.top), flush=True)
                last_report = now
            if args.once and await caught_up(consumer):
                break
    finally:
        await consumer.stop()
    print(counts.report(time.time(), args.top), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bootstrap", default="127.0.0.1:9092")
    parser.add_argument("--group", default="analytics-example")
    parser.add_argument("--prefix", default="", help="topic prefix, if the deployment uses one")
    parser.add_argument("--from-beginning", action="store_true")
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between reports")
    parser.add_argument("--top", type=int, default=10)
    parser.add_argument("--once", action="store_true", help="exit when caught up (for scripts and tests)")
    parser.add_argument(
        "--security-protocol", default="PLAINTEXT", choices=["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
    )
    parser.add_argument("--ca-file", help="PEM bundle of the cluster's CA (SSL, SASL_SSL)")
    parser.add_argument(
        "--sasl-mechanism", default="SCRAM-SHA-512", choices=["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]
    )
    parser.add_argument("--sasl-username")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
