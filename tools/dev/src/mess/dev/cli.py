"""``mess-dev``: the developer's entry point (``make up`` and friends call it)."""

import argparse
import json
import logging
import os
import shutil
import sys
from pathlib import Path

from mess.contracts.schemas import check_directory, export_schemas
from mess.dev import demo
from mess.dev.asyncapi import render_asyncapi
from mess.dev.stack import LocalStack, StackError, StackState, process_alive
from mess.runtime import access
from mess.runtime.endpoints import StackSettings


def repo_root() -> Path:
    for candidate in [Path.cwd(), *Path.cwd().parents]:
        if (candidate / "libs" / "contracts").is_dir():
            return candidate
    raise SystemExit("run mess-dev inside the mess repository")


def state_dir() -> Path:
    return Path(os.environ.get("MESS_STATE_DIR") or repo_root() / ".mess")


def schema_dir(args: argparse.Namespace) -> Path:
    return Path(args.dir) if args.dir else repo_root() / "libs" / "contracts" / "schemas"


def cmd_up(args: argparse.Namespace) -> int:
    secure = args.secure or os.environ.get("MESS_LOCAL_SECURE", "") not in ("", "0", "false")
    stack = LocalStack(StackSettings(), state_dir(), with_services=not args.no_services, secure=secure)
    try:
        state = stack.up()
    except StackError as exc:
        print(f"mess-dev up failed: {exc}", file=sys.stderr)
        return 1
    for process in state.started:
        print(f"running  {process.name:<9} pid {process.pid:<7} port {process.port}  log {process.log}")
    for name in state.reused:
        print(f"reusing  {name}")
    return 0


def cmd_down(_: argparse.Namespace) -> int:
    stopped = LocalStack(StackSettings(), state_dir()).down()
    print("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))
    return 0


def cmd_status(_: argparse.Namespace) -> int:
    state = StackState.load(state_dir() / "stack.json")
    for process in state.started:
        alive = process.pid == 0 or process_alive(process.pid)
        print(f"{process.name:<9} pid {process.pid:<7} port {process.port}  {'up' if alive else 'DEAD'}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    settings = StackSettings()
    query_url = f"http://127.0.0.1:{os.environ.get('MESS_QUERY_PORT', '8000')}"
    print(
        f"rendering {args.works} works x {args.renditions} renditions into s3://{settings.bucket}/{settings.drop_prefix}demo/"
    )
    demo.run_importer(args.works, args.renditions, args.max_seconds)
    expected = demo.dropped_objects(settings)
    print(f"waiting for {expected} tracks to be ingested, embedded and indexed:")
    final = demo.wait_until_indexed(settings, expected, args.timeout)
    if not final.done:
        print(f"gave up after {args.timeout:.0f}s; see .mess/logs/ for what is stuck", file=sys.stderr)
        return 1
    demo.show_recommendations(query_url, settings)
    print(f"\nAPI  {query_url}    docs {query_url}/docs")
    return 0


def cmd_keys_new(args: argparse.Namespace) -> int:
    # The key goes to stderr and the entry to stdout, so `mess-dev keys new LABEL >> keys` files the entry
    # while the key shows on the terminal only.
    key = access.mint_key()
    try:
        entry = access.key_line(args.label, key)
    except access.KeyConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    print(f"key for {args.label} (give it to the client; it is shown only this once):\n  {key}", file=sys.stderr)
    print(entry)
    return 0


def cmd_keys_hash(args: argparse.Namespace) -> int:
    key = sys.stdin.readline().strip()
    if not key:
        print("give the key on stdin", file=sys.stderr)
        return 2
    try:
        print(access.key_line(args.label, key))
    except access.KeyConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    return 0


def cmd_bad_input(args: argparse.Namespace) -> int:
    # Imported here: schemathesis and hypothesis load slowly and only this command needs them.
    from mess.dev import bad_input

    results = Path(args.results) if args.results else repo_root() / bad_input.RESULTS_PATH
    report = bad_input.run_bad_input(args.examples, args.budget_s, results)
    print(bad_input.render(report))
    print(f"\nwritten to {results}")
    return 0 if report.summary()["wrong_answers"] == 0 and report.summary()["server_errors_5xx"] == 0 else 1


def cmd_faults(args: argparse.Namespace) -> int:
    # Imported here: the suite pulls in the corpus renderer, which the other commands do not need.
    from mess.dev.faults import Plan, run_suite

    plan = Plan(
        tracks=args.tracks,
        kills_per_service=args.kills_per_service,
        outage_s=args.outage_s,
        feed_s=args.feed_s,
        settle_s=args.settle_s,
        seed=args.seed,
    )
    logs = state_dir() / "faults" / "logs"
    shutil.rmtree(logs, ignore_errors=True)  # this run's logs only
    print(f"service and backing logs: {logs}")
    report = run_suite(plan, logs)
    print("\n".join(report.lines()))
    if args.json:
        Path(args.json).write_text(json.dumps(report.as_dict(), indent=2, default=str) + "\n", encoding="utf-8")
    return 0 if report.ok and not report.reads.failures else 1


def cmd_schemas_export(args: argparse.Namespace) -> int:
    for path in export_schemas(schema_dir(args)):
        print(path)
    asyncapi = schema_dir(args).parent / "asyncapi.json"
    asyncapi.write_text(render_asyncapi(), encoding="utf-8")
    print(asyncapi)
    return 0


def cmd_schemas_check(args: argparse.Namespace) -> int:
    # The document beside the checked-in schemas, whichever schema folder is checked.
    asyncapi = repo_root() / "libs" / "contracts" / "asyncapi.json"
    if not asyncapi.exists() or asyncapi.read_text(encoding="utf-8") != render_asyncapi():
        print(f"{asyncapi} is not what the services declare: run `make schemas`", file=sys.stderr)
        return 1
    report = check_directory(schema_dir(args))
    broken = {topic: problems for topic, problems in report.items() if problems}
    for topic, problems in broken.items():
        for problem in problems:
            print(f"BREAKING {topic}: {problem}", file=sys.stderr)
    if broken:
        print("A breaking change needs a new .v2 topic; additive optional fields are fine.", file=sys.stderr)
        return 1
    print(f"schemas compatible: {len(report)} topics checked")
    return 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    # Retries while a broker boots and every probe request are noise here.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    parser = argparse.ArgumentParser(prog="mess-dev")
    commands = parser.add_subparsers(dest="command", required=True)
    up = commands.add_parser("up", help="start the local stack (and the services)")
    up.add_argument("--no-services", action="store_true", help="backing services only")
    up.add_argument(
        "--secure",
        action="store_true",
        help="the bus requires SASL_SSL (TLS + SCRAM-SHA-512, one principal per service); or MESS_LOCAL_SECURE=1",
    )
    up.set_defaults(run=cmd_up)
    commands.add_parser("down", help="stop what up started").set_defaults(run=cmd_down)
    commands.add_parser("status", help="what up started").set_defaults(run=cmd_status)
    run_demo = commands.add_parser("demo", help="render the demo corpus into the drop prefix and wait until indexed")
    run_demo.add_argument("--works", type=int, default=40)
    run_demo.add_argument("--renditions", type=int, default=3)
    run_demo.add_argument("--max-seconds", type=float, default=30.0)
    run_demo.add_argument("--timeout", type=float, default=1800.0)
    run_demo.set_defaults(run=cmd_demo)
    faults = commands.add_parser(
        "faults", help="ingest a corpus while killing services, the broker, Redis, Postgres and S3; print the verdict"
    )
    faults.add_argument("--tracks", type=int, default=200)
    faults.add_argument("--kills-per-service", type=int, default=3)
    faults.add_argument("--outage-s", type=float, default=12.0, help="how long Redis and S3 stay down")
    faults.add_argument("--feed-s", type=float, default=150.0, help="the window the faults are spread over")
    faults.add_argument("--settle-s", type=float, default=600.0, help="longest wait for the system to heal")
    faults.add_argument("--seed", type=int, default=7)
    faults.add_argument("--json", default="", help="also write the report here (bench/results/faults.json)")
    faults.set_defaults(run=cmd_faults)
    keys = commands.add_parser("keys", help="API keys").add_subparsers(dest="action", required=True)
    new_key = keys.add_parser("new", help="mint a key: the key once on stderr, its label:sha256 entry on stdout")
    new_key.add_argument("label", help="names the key in logs, e.g. ci-uploader-2025-06")
    new_key.set_defaults(run=cmd_keys_new)
    hash_key = keys.add_parser("hash", help="the label:sha256 entry of a key read from stdin")
    hash_key.add_argument("label")
    hash_key.set_defaults(run=cmd_keys_hash)
    bad = commands.add_parser(
        "bad-input", help="fuzz the APIs, send bad uploads, hostile ids and poison events; print how each was answered"
    )
    bad.add_argument("--examples", type=int, default=500, help="fuzz cases per operation and mode (positive, negative)")
    bad.add_argument("--budget-s", type=float, default=900.0, help="fuzzing stops at half of this; the rest is bounded")
    bad.add_argument("--results", help="JSON output (default bench/results/bad_input.json)")
    bad.set_defaults(run=cmd_bad_input)
    schemas = commands.add_parser("schemas", help="event JSON Schemas").add_subparsers(dest="action", required=True)
    for name, run in (("export", cmd_schemas_export), ("check", cmd_schemas_check)):
        sub = schemas.add_parser(name)
        sub.add_argument("--dir", help="schema folder (default libs/contracts/schemas)")
        sub.set_defaults(run=run)
    args = parser.parse_args(argv)
    return int(args.run(args))


if __name__ == "__main__":
    sys.exit(main())
