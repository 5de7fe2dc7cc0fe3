"""`python -m mess.indexer` runs the service; `rebuild` rebuilds the index; `reseed` refills the embeddings topic."""

import argparse
import asyncio
import os
import signal
import sys

from mess.indexer.config import Settings
from mess.indexer.main import create_app
from mess.indexer.rebuild import rebuild, rebuild_settings
from mess.indexer.reseed import reseed
from mess.runtime.logging import configure_logging
from mess.runtime.serving import serve


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m mess.indexer", description=__doc__)
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("serve", help="consume, index and publish snapshots (the default)")
    replay = commands.add_parser(
        "rebuild", help="replay the embedded and removed topics from the beginning into a fresh snapshot"
    )
    replay.add_argument(
        "--index-type", help="FAISS factory string(s) for large shards, e.g. HNSW32,SQ8 or 'HNSW32,SQ8|IVF{nlist},SQ8'"
    )
    replay.add_argument("--model", help="model fingerprint the new index holds (name@revision/pooling/dim)")
    replay.add_argument("--shards", type=int, help="shard count of the new index")
    commands.add_parser(
        "reseed", help="publish every vector of the snapshot LATEST names back to the embeddings topic (a lost cluster)"
    )
    return parser.parse_args(argv)


def run_service(settings: Settings) -> int:
    """Exit status: 0 after a SIGTERM with everything applied published, 1 when
    the indexer stopped on an error, 3 when the app could not start."""
    failures: list[BaseException] = []

    def on_fatal(error: BaseException) -> None:
        failures.append(error)
        # The server is mess.runtime.serving's own; a SIGTERM to this process
        # is how it is told to stop, and the lifespan then closes the clients
        # (publishing nothing more: the indexer stopped on an error).
        os.kill(os.getpid(), signal.SIGTERM)

    app = create_app(settings, on_fatal=on_fatal)
    status = serve(app, host=settings.host, port=settings.port, graceful_s=settings.shutdown_grace_s)
    return 1 if failures else status


def main(argv: list[str] | None = None) -> int:
    arguments = _arguments(argv)
    settings = Settings()
    configure_logging("indexer", settings.log_level, settings.stack.log_format)
    if arguments.command == "rebuild":
        try:
            settings = rebuild_settings(
                settings, index_type=arguments.index_type, model=arguments.model, shards=arguments.shards
            )
        except ValueError as exc:
            print(f"rebuild: {exc}", file=sys.stderr)
            return 2
        report = asyncio.run(rebuild(settings))
        print("\n".join(report.lines()))
        return 0
    if arguments.command == "reseed":
        print("\n".join(asyncio.run(reseed(settings)).lines()))
        return 0
    return run_service(settings)


if __name__ == "__main__":
    sys.exit(main())
