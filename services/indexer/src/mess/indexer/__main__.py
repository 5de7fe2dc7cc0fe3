"""`python -m mess.indexer` runs the service; `python -m mess.indexer rebuild` rebuilds the index."""

import argparse
import asyncio
import sys

import uvicorn

from mess.indexer.config import Settings
from mess.indexer.main import create_app
from mess.indexer.rebuild import rebuild, rebuild_settings
from mess.runtime.logging import configure_logging


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m mess.indexer", description=__doc__)
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("serve", help="consume, index and publish snapshots (the default)")
    replay = commands.add_parser(
        "rebuild", help="replay the embedded and removed topics from the beginning into a fresh snapshot"
    )
    replay.add_argument("--index-type", help="FAISS factory for large shards, e.g. HNSW32,SQ8 or IVF{nlist},SQ8")
    replay.add_argument("--model", help="model fingerprint the new index holds (name@revision/pooling/dim)")
    replay.add_argument("--shards", type=int, help="shard count of the new index")
    return parser.parse_args(argv)


def serve(settings: Settings) -> int:
    failures: list[BaseException] = []
    server: uvicorn.Server | None = None

    def on_fatal(error: BaseException) -> None:
        failures.append(error)
        if server is not None:
            server.should_exit = True

    app = create_app(settings, on_fatal=on_fatal)
    server = uvicorn.Server(uvicorn.Config(app, host=settings.host, port=settings.port, log_config=None))
    server.run()
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    arguments = _arguments(argv)
    settings = Settings()
    configure_logging("indexer", settings.log_level)
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
    return serve(settings)


if __name__ == "__main__":
    sys.exit(main())
