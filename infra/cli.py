"""The `fleetpulse` command line: one entry point for every service and the local stack."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Sequence

import asyncpg

from infra.settings import StackSettings

Handler = Callable[[argparse.Namespace], int]


class CommandError(RuntimeError):
    """An expected failure: printed as one line, exit status 1, no traceback."""


def _stack_up(args: argparse.Namespace) -> int:
    from infra import stack

    for st, started in stack.up(StackSettings()):
        verb = "started" if started else "already running"
        print(f"{st.name:9} {verb:16} pid {st.pid}  {st.address}  ({st.detail})")
    return 0


def _stack_install(args: argparse.Namespace) -> int:
    from infra.stack import KafkaBroker

    KafkaBroker(StackSettings()).install()
    print("Kafka jars resolved")
    return 0


def _stack_down(args: argparse.Namespace) -> int:
    from infra import stack

    for name, was_running in stack.down(StackSettings()):
        print(f"{name:9} {'stopped' if was_running else 'was not running'}")
    return 0


def _stack_status(args: argparse.Namespace) -> int:
    from infra import stack

    statuses = stack.status(StackSettings())
    for st in statuses:
        state = f"running  pid {st.pid}" if st.running else "stopped"
        print(f"{st.name:9} {state:18} {st.address}  ({st.detail})")
    return 0 if all(st.running for st in statuses) else 3


async def _connect(settings: StackSettings) -> asyncpg.Connection:
    try:
        return await asyncpg.connect(**settings.connect_kwargs())
    except (OSError, asyncpg.PostgresError) as exc:
        raise CommandError(
            f"cannot connect to {settings.describe()}: {exc} "
            "(is the stack up? `fleetpulse stack up`)"
        ) from None


def _db_migrate(args: argparse.Namespace) -> int:
    from infra.db import migrate

    settings = StackSettings()
    storage = args.storage or settings.pg_storage

    async def run() -> None:
        conn = await _connect(settings)
        try:
            report = await migrate(conn, storage=storage)
        finally:
            await conn.close()
        for mig in report.applied:
            print(f"applied  {mig.version:04d}_{mig.name} ({mig.variant})")
        print(
            f"{settings.describe()}: storage mode {report.mode}, "
            f"{len(report.applied)} applied, {report.already} already present"
        )

    asyncio.run(run())
    return 0


def _topics_create(args: argparse.Namespace) -> int:
    from infra.topics import create_topics

    settings = StackSettings()
    results = asyncio.run(
        create_topics(settings.kafka_bootstrap, client_id=settings.kafka_client_id)
    )
    for r in results:
        verb = "created" if r.created else "exists"
        note = "" if r.partitions == r.spec.partitions else f" (spec says {r.spec.partitions})"
        print(f"{verb:8} {r.spec.name:20} {r.partitions} partitions{note}  {r.spec.description}")
    return 0


def _schemas_export(args: argparse.Namespace) -> int:
    from schemas.export import export

    for path in export():
        print(f"wrote {path}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from infra.demo import run_demo

    return run_demo(StackSettings())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fleetpulse",
        description=(
            "FleetPulse: per-second host metrics through Kafka into TimescaleDB/PostgreSQL. "
            "Settings come from FLEETPULSE_* environment variables (see README)."
        ),
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    stack = sub.add_parser("stack", help="run the local Kafka broker and PostgreSQL cluster")
    stack_sub = stack.add_subparsers(dest="action", required=True, metavar="ACTION")
    stack_sub.add_parser(
        "up", help="start Kafka and PostgreSQL (first time: install, initdb, TLS); idempotent"
    ).set_defaults(func=_stack_up)
    stack_sub.add_parser("down", help="stop both by PID").set_defaults(func=_stack_down)
    stack_sub.add_parser(
        "install", help="resolve the Kafka broker's jars with Maven (done by `up` when missing)"
    ).set_defaults(func=_stack_install)
    stack_sub.add_parser(
        "status", help="what runs where (exit 3 if something is stopped)"
    ).set_defaults(func=_stack_status)

    db = sub.add_parser("db", help="database schema")
    db_sub = db.add_subparsers(dest="action", required=True, metavar="ACTION")
    mig = db_sub.add_parser("migrate", help="apply the SQL migrations (safe to run again)")
    mig.add_argument(
        "--storage",
        choices=["auto", "postgres", "timescaledb"],
        help="storage mode on first migration (default: FLEETPULSE_PG_STORAGE, else auto)",
    )
    mig.set_defaults(func=_db_migrate)

    topics = sub.add_parser("topics", help="Kafka topics")
    topics_sub = topics.add_subparsers(dest="action", required=True, metavar="ACTION")
    topics_sub.add_parser(
        "create", help="create the topics of schemas/topics.py (safe to run again)"
    ).set_defaults(func=_topics_create)

    schemas = sub.add_parser("schemas", help="message schemas")
    schemas_sub = schemas.add_subparsers(dest="action", required=True, metavar="ACTION")
    schemas_sub.add_parser(
        "export", help="write the JSON Schema files under schemas/json/"
    ).set_defaults(func=_schemas_export)

    sub.add_parser(
        "demo", help="bring the stack up and run what the pipeline has so far"
    ).set_defaults(func=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from infra.db import MigrationError
    from infra.stack import StackError

    args = build_parser().parse_args(argv)
    handler: Handler = args.func
    try:
        return handler(args)
    except (CommandError, StackError, MigrationError, FileNotFoundError) as exc:
        print(f"fleetpulse: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
