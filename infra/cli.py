"""The `fleetpulse` command line: one entry point for every service and the local stack."""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from infra.backup.cli import add_commands as add_backup_commands
from runtime.errors import FleetPulseError
from runtime.logs import configure_logging
from schemas import RESOLUTIONS

if TYPE_CHECKING:
    from infra.settings import StackSettings
    from registry.settings import RegistrySettings

Handler = Callable[[argparse.Namespace], int]


class CommandError(FleetPulseError):
    """An expected failure: printed as one line, exit status 1, no traceback."""


def _stack_settings(**options: Any) -> StackSettings:
    # Imported here: the services' commands (`fleetpulse agent` above all) never need it.
    from infra.settings import StackSettings

    return StackSettings(**options)


def _stack_up(args: argparse.Namespace) -> int:
    from infra import stack

    if args.brokers is not None:
        # For everything this command builds, the services it starts included.
        os.environ["FLEETPULSE_KAFKA_BROKERS"] = str(args.brokers)
    settings = _stack_settings(**_given(monitoring=args.monitoring or None))
    results = stack.up(settings)
    width = max(9, *(len(st.name) for st, _ in results))
    for st, started in results:
        verb = "started" if started else "already running"
        print(f"{st.name:{width}} {verb:16} pid {st.pid}  {st.address}  ({st.detail})")
    if settings.monitoring:
        url = f"http://127.0.0.1:{settings.prometheus_port}"
        print(f"Prometheus: {url}  (targets {url}/targets, alerts {url}/alerts)")
    return 0


def _stack_install(args: argparse.Namespace) -> int:
    from infra.stack import KafkaCluster

    KafkaCluster(_stack_settings()).install()
    print("Kafka jars resolved")
    return 0


def _stack_down(args: argparse.Namespace) -> int:
    from infra import stack

    results = stack.down(_stack_settings())
    width = max(9, *(len(name) for name, _ in results))
    for name, was_running in results:
        print(f"{name:{width}} {'stopped' if was_running else 'was not running'}")
    return 0


def _stack_status(args: argparse.Namespace) -> int:
    from infra import stack

    statuses = stack.status(_stack_settings())
    width = max(9, *(len(st.name) for st in statuses))
    for st in statuses:
        if st.name in ("quorum", "replicas"):  # the cluster's health, not a process
            state = "ok" if st.running else "DEGRADED"
        else:
            state = f"running  pid {st.pid}" if st.running else "stopped"
        print(f"{st.name:{width}} {state:18} {st.address}  ({st.detail})")
    return 0 if all(st.running for st in statuses) else 3


def _stack_rotate_certs(args: argparse.Namespace) -> int:
    from infra import stack

    for line in stack.rotate_certs(_stack_settings()):
        print(line)
    return 0


def _stack_rotate_password(args: argparse.Namespace) -> int:
    from infra import stack

    what = stack.rotate_password(_stack_settings(), args.principal)
    print(f"{what}: new password in effect (never printed; the file under secrets/ holds it)")
    return 0


def _db_migrate(args: argparse.Namespace) -> int:
    from infra.db import migrate
    from runtime.postgres import connect

    settings = _stack_settings()
    storage = args.storage or settings.pg_storage

    async def run() -> None:
        conn = await connect(settings)
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
    from runtime.topics import create_contract_topics
    from streams.settings import StreamSettings

    settings = _stack_settings()
    results = asyncio.run(create_contract_topics(settings, StreamSettings().changelog_topic))
    for r in results:
        verb = "created" if r.created else "exists"
        note = "" if r.partitions == r.spec.partitions else f" (spec says {r.spec.partitions})"
        print(f"{verb:8} {r.spec.name:36} {r.partitions} partitions{note}  {r.spec.description}")
    return 0


def _schemas_export(args: argparse.Namespace) -> int:
    from schemas.export import export

    for path in export():
        print(f"wrote {path}")
    return 0


_SPOOL_HELP = (
    "keep events on disk here until Kafka acknowledges them, so they survive a crash "
    "or restart (default: FLEETPULSE_SPOOL_DIR; unset = memory only; bound "
    "FLEETPULSE_SPOOL_MAX_BYTES, 64 MiB)"
)


def _given(**options: Any) -> dict[str, Any]:
    """The command-line options actually given: they override the environment's settings."""
    return {k: v for k, v in options.items() if v is not None}


def _agent(args: argparse.Namespace) -> int:
    from producers.agent import Agent, sample_once
    from producers.settings import AgentSettings
    from runtime.service import run_service

    settings = AgentSettings(
        **_given(
            server_id=args.server_id,
            disk_mount=args.disk_mount,
            top_processes=args.top,
            metrics_port=args.metrics_port,
            spool_dir=args.spool_dir,
        )
    )
    if args.once:
        server_id = settings.server_id
        if server_id is None:
            server_id = str(uuid.uuid5(uuid.NAMESPACE_DNS, socket.getfqdn()))
            print(
                f"(no --server-id: using {server_id}, derived from this host's name)",
                file=sys.stderr,
            )
        print(sample_once(settings, server_id).model_dump_json(indent=2))
        return 0
    if settings.server_id is None:
        raise CommandError(
            "the agent needs this host's server id: --server-id or FLEETPULSE_SERVER_ID"
        )
    return run_service(Agent(settings), settings)


def _simulate(args: argparse.Namespace) -> int:
    from producers.settings import SimulatorSettings
    from producers.simulator import Simulator, simulated_server_id
    from runtime.service import run_service

    settings = SimulatorSettings(
        **_given(
            hosts=args.hosts,
            seed=args.seed,
            metrics_port=args.metrics_port,
            spool_dir=args.spool_dir,
        )
    )
    if args.list_ids:
        for i in range(settings.hosts):
            print(simulated_server_id(settings.seed, i))
        return 0
    return run_service(Simulator(settings, duration=args.duration), settings)


def _drill(args: argparse.Namespace) -> int:
    from infra.drill import Drill, DrillOptions, report_json
    from infra.faults import FAULTS

    settings = _stack_settings()
    faults = list(FAULTS) if args.fault == "all" else [args.fault]
    logs = args.logs or settings.home_dir / "drills" / time.strftime("%Y%m%dT%H%M%S")
    options = DrillOptions(
        hosts=args.hosts, speed=args.speed, pause=args.pause, logs=logs, keep=args.keep
    )
    report = asyncio.run(Drill(settings, options).run(faults))
    if args.json:
        args.json.write_text(report_json(report) + "\n")
    return 0 if report.passed and report.recovered else 1


def _lag(args: argparse.Namespace) -> int:
    from aiokafka.errors import KafkaError

    from infra.lag import report
    from registry.settings import RegistrySettings
    from sinks.settings import SinkSettings
    from streams.settings import StreamSettings

    stream, sink, registry = StreamSettings(), SinkSettings(), RegistrySettings()
    groups = {
        stream.stream_group: [stream.raw_topic],
        sink.sink_group: list(sink.agg_topics.values()),
        registry.registry_group: [registry.status_topic],
    }
    try:
        print(asyncio.run(report(stream, groups, stream.dlq_topic)))
    except KafkaError as exc:
        raise CommandError(f"Kafka at {stream.kafka_bootstrap}: {exc}") from None
    return 0


def _stream(args: argparse.Namespace) -> int:
    from streams.app import StreamWorker
    from streams.settings import StreamSettings

    StreamWorker(StreamSettings()).run()
    return 0


def _sink(args: argparse.Namespace) -> int:
    from runtime.service import run_service
    from sinks.service import Sink
    from sinks.settings import SinkSettings

    settings = SinkSettings()
    return run_service(Sink(settings), settings)


def _alerts(args: argparse.Namespace) -> int:
    from alerts.service import AlertEvaluator
    from alerts.settings import AlertsSettings
    from runtime.service import run_service

    settings = AlertsSettings()
    return run_service(AlertEvaluator(settings), settings)


def _registry_settings() -> RegistrySettings:
    from registry.settings import RegistrySettings

    return RegistrySettings()


def _registry(args: argparse.Namespace) -> int:
    from registry.service import RegistryService
    from runtime.service import run_service

    settings = _registry_settings()
    return run_service(RegistryService(settings), settings)


def _read_password(args: argparse.Namespace) -> str:
    import getpass

    if args.password_file:
        path: Path = args.password_file
        return path.read_text().splitlines()[0] if path.read_text() else ""
    if not sys.stdin.isatty():
        raise CommandError("no terminal to ask for the password: use --password-file")
    password = getpass.getpass("password for the new admin: ")
    if getpass.getpass("again: ") != password:
        raise CommandError("the two passwords differ")
    return password


def _registry_create_admin(args: argparse.Namespace) -> int:
    from registry.service import create_admin

    settings = _registry_settings()
    password = _read_password(args)
    user_id = asyncio.run(create_admin(settings, args.email, args.name or args.email, password))
    print(f"admin {args.email} created (id {user_id})")
    return 0


def _registry_rotate_key(args: argparse.Namespace) -> int:
    from registry.service import rotate_key

    version, rows = asyncio.run(rotate_key(_registry_settings()))
    print(f"key version {version} active; {rows} server passwords re-encrypted")
    return 0


def _db_maintain(args: argparse.Namespace) -> int:
    from runtime.postgres import connect
    from sinks.maintenance import maintain
    from sinks.settings import SinkSettings

    settings = SinkSettings()

    async def run() -> None:
        conn = await connect(settings)
        try:
            report = await maintain(conn, settings)
        finally:
            await conn.close()
        print(f"{settings.describe()}: {report.summary()}")
        if report.missing:
            raise CommandError(f"TimescaleDB policies missing: {', '.join(report.missing)}")

    asyncio.run(run())
    return 0


def _demo(args: argparse.Namespace) -> int:
    from infra.demo import DemoOptions, run_demo
    from producers.settings import SimulatorSettings

    sim = SimulatorSettings(**_given(hosts=args.hosts, seed=args.seed))
    return run_demo(
        _stack_settings(), DemoOptions(hosts=sim.hosts, seed=sim.seed, seconds=args.seconds)
    )


def _systemd(args: argparse.Namespace) -> int:
    from infra import systemd

    options = systemd.UnitOptions(
        executable=args.executable or systemd.find_executable(),
        user=args.user,
        env_file=args.env_file,
        home=args.home,
        read_write=tuple(args.read_write),
    )
    if not options.executable.is_file():
        raise CommandError(f"--executable {options.executable}: no such file")
    written = systemd.write_units(systemd.select(args.services), options, args.output)
    for path in written:
        print(f"wrote {path}")
    print("\nTo install them on this host, as root:")
    for line in systemd.install_commands(written, options):
        print(f"  {line}")
    return 0


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
    up = stack_sub.add_parser(
        "up", help="start Kafka and PostgreSQL (first time: install, initdb, TLS); idempotent"
    )
    up.add_argument(
        "--monitoring",
        action="store_true",
        help="also Prometheus (scraping every service) and the PostgreSQL exporter, and the "
        "brokers' JMX exporter (default: FLEETPULSE_MONITORING)",
    )
    up.add_argument(
        "--brokers",
        type=int,
        choices=range(1, 6),
        metavar="N",
        help="Kafka brokers (default FLEETPULSE_KAFKA_BROKERS, or what this stack was first "
        "started with, else 1); 3 gives replicated topics (RF 3, min.insync.replicas 2). A "
        "cluster keeps the size it was first started with",
    )
    up.set_defaults(func=_stack_up)
    stack_sub.add_parser("down", help="stop everything by PID").set_defaults(func=_stack_down)
    stack_sub.add_parser(
        "install", help="resolve the Kafka broker's jars with Maven (done by `up` when missing)"
    ).set_defaults(func=_stack_install)
    stack_sub.add_parser(
        "status", help="what runs where (exit 3 if something is stopped)"
    ).set_defaults(func=_stack_status)
    stack_sub.add_parser(
        "rotate-certs",
        help="issue the broker, database and registry new certificates from the stack's CA; "
        "the broker restarts, PostgreSQL reloads, a running registry picks its own up",
    ).set_defaults(func=_stack_rotate_certs)
    rotate = stack_sub.add_parser(
        "rotate-password",
        help="give one Kafka user or PostgreSQL role a new password (server first, then its "
        "file under <home>/secrets/; services use it from their next connection)",
    )
    rotate.add_argument(
        "principal",
        metavar="PRINCIPAL",
        help="a Kafka user (admin, producer, stream, sink, registry) or a PostgreSQL role",
    )
    rotate.set_defaults(func=_stack_rotate_password)

    db = sub.add_parser("db", help="database schema")
    db_sub = db.add_subparsers(dest="action", required=True, metavar="ACTION")
    mig = db_sub.add_parser("migrate", help="apply the SQL migrations (safe to run again)")
    mig.add_argument(
        "--storage",
        choices=["auto", "postgres", "timescaledb"],
        help="storage mode on first migration (default: FLEETPULSE_PG_STORAGE, else auto)",
    )
    mig.set_defaults(func=_db_migrate)
    db_sub.add_parser(
        "maintain",
        help="create partitions ahead and drop those past retention (TimescaleDB: check policies)",
    ).set_defaults(func=_db_maintain)

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

    agent = sub.add_parser(
        "agent",
        help="sample this host every second and send the events to metrics.raw.v1",
        description="Samples this host once per second (aligned to the clock) and sends raw "
        "metric events to Kafka. Stops cleanly on SIGTERM/SIGINT, flushing what is buffered.",
    )
    agent.add_argument("--server-id", help="this host's id (default: FLEETPULSE_SERVER_ID)")
    agent.add_argument("--once", action="store_true", help="print one event as JSON and exit")
    agent.add_argument("--disk-mount", help="mount whose use is disk_usage (default /)")
    agent.add_argument("--top", type=int, help="how many top processes to report (default 10)")
    agent.add_argument("--metrics-port", type=int, help="Prometheus /metrics port (0 = off)")
    agent.add_argument("--spool-dir", metavar="DIR", help=_SPOOL_HELP)
    agent.set_defaults(func=_agent)

    sim = sub.add_parser(
        "simulate",
        help="emulate N hosts at 1 Hz (seeded, reproducible)",
        description="Emits one event per simulated host per second through the producer "
        "library, and reports when it falls behind the clock.",
    )
    sim.add_argument("--hosts", type=int, help="number of hosts (default 200)")
    sim.add_argument("--seed", type=int, help="seed of the series (default 42)")
    sim.add_argument("--duration", type=float, help="stop after this many seconds")
    sim.add_argument("--metrics-port", type=int, help="Prometheus /metrics port (0 = off)")
    sim.add_argument("--spool-dir", metavar="DIR", help=_SPOOL_HELP)
    sim.add_argument(
        "--list-ids", action="store_true", help="print the simulated server ids and exit"
    )
    sim.set_defaults(func=_simulate)

    from infra.faults import FAULTS

    drill = sub.add_parser(
        "drill",
        help="rehearse a fault: kill -9 one part of the pipeline under load, restart it, and "
        "check every row against an uninterrupted run",
        description="Runs the stream worker, sink, registry and a time-lapse of simulated "
        "hosts on topics and a database of their own, on the running local stack "
        "(`stack up --brokers 3` for the broker faults). Kills the part named (mid-window, "
        "kill -9), starts it again after the pause, measures the time until the consumer "
        "groups are back under one second of lag, then replays the same load with nothing "
        "killed and compares every 5 s, hourly and daily row. Prints expected, lost, "
        "duplicated and wrong rows and the dead letters; exit 1 unless all are 0.",
    )
    drill.add_argument("fault", choices=[*FAULTS, "all"], help="what to kill; all: each in turn")
    drill.add_argument("--hosts", type=int, default=500, help="simulated hosts (default 500)")
    drill.add_argument(
        "--speed",
        type=float,
        default=3.0,
        help="simulated seconds per second of the load (default 3: 1,500 events/s at 500 hosts)",
    )
    drill.add_argument(
        "--pause", type=float, default=5.0, help="seconds the killed part stays down (default 5)"
    )
    drill.add_argument("--logs", type=Path, help="folder of the services' logs")
    drill.add_argument(
        "--keep",
        action="store_true",
        help="keep the drill's topics and databases when it passes (a failed drill's are kept)",
    )
    drill.add_argument("--json", type=Path, help="also write the report to this file as JSON")
    drill.set_defaults(func=_drill)

    sub.add_parser(
        "lag",
        help="how far the stream, sink and registry groups are behind; the dead letters",
        description="Reads committed and end offsets from the broker: per consumer group "
        "(FLEETPULSE_STREAM_GROUP on the raw topic, FLEETPULSE_SINK_GROUP on the aggregate "
        "topics, FLEETPULSE_REGISTRY_GROUP on the status topic) and topic, the messages not yet "
        "consumed; and how many dead letters the DLQ topic holds.",
    ).set_defaults(func=_lag)

    sub.add_parser(
        "stream",
        help="run a stream worker: raw events into 5 s, hourly and daily windows",
        description="Runs the Faust worker that consumes metrics.raw.v1, windows events by "
        "event time per server, and emits closed windows, status changes and dead letters. "
        "Run several to share the partitions. Stops on SIGTERM/SIGINT.",
    ).set_defaults(func=_stream)

    sub.add_parser(
        "sink",
        help="write the aggregate topics into the database (one consumer group)",
        description=f"Consumes {', '.join(r.topic for r in RESOLUTIONS)}, upserts "
        f"batches into {', '.join(r.table for r in RESOLUTIONS)}, commits offsets after the "
        "transaction, dead-letters what the database rejects. Stops cleanly on SIGTERM/SIGINT.",
    ).set_defaults(func=_sink)

    sub.add_parser(
        "alerts",
        help="run the alert evaluator: rules on closed windows, to Alertmanager and a webhook",
        description="Consumes the aggregate topics and metrics.status.v1 as a downstream "
        "consumer, judges the alert rules kept in PostgreSQL (managed through the registry's "
        "/alerts/rules), publishes firing and resolved events to metrics.alerts.v1, keeps them "
        "as history, and delivers them to Alertmanager (FLEETPULSE_ALERTMANAGER_URL, or the "
        "local stack's) and a webhook (FLEETPULSE_ALERTS_WEBHOOK_URL). One evaluator is active "
        "at a time; another one stands by. Stops cleanly on SIGTERM/SIGINT.",
    ).set_defaults(func=_alerts)

    registry = sub.add_parser(
        "registry",
        help="run the registry API (users, servers, RBAC, metrics reads) and its admin commands",
        description="Without an action: serve the API over HTTPS (FLEETPULSE_REGISTRY_HOST/PORT, "
        "default 127.0.0.1:8080, OpenAPI at /docs; the certificate <home>/tls/registry.crt that "
        "`stack up` issues, or FLEETPULSE_REGISTRY_TLS_CERT/KEY) and keep servers.is_online "
        "from metrics.status.v1. Stops cleanly on SIGTERM/SIGINT.",
    )
    registry.set_defaults(func=_registry)
    registry_sub = registry.add_subparsers(dest="action", metavar="ACTION")
    admin = registry_sub.add_parser(
        "create-admin",
        help="create an admin user (the password is asked for, or read from --password-file)",
    )
    admin.add_argument("--email", required=True, help="the admin's e-mail (login name)")
    admin.add_argument("--name", help="display name (default: the e-mail)")
    admin.add_argument(
        "--password-file", type=Path, help="file whose first line is the password (else asked)"
    )
    admin.set_defaults(func=_registry_create_admin)
    registry_sub.add_parser(
        "rotate-key",
        help="activate a new encryption key version and re-encrypt every server password",
    ).set_defaults(func=_registry_rotate_key)

    add_backup_commands(sub)

    from infra import systemd

    units = sub.add_parser(
        "systemd",
        help="write a systemd unit per service, restarted when it dies (rate-limited)",
        description="Writes fleetpulse-<service>.service for the agent, stream worker, sink, "
        "registry and backup schedule (and the simulator, on request): Restart=on-failure "
        f"after {systemd.RESTART_SEC}, at most {systemd.START_LIMIT_BURST} starts in "
        f"{systemd.START_LIMIT_INTERVAL} (then the unit stays failed), memory, task and "
        "file limits, the settings from an environment file, a user of its own, and "
        "hardening (read-only system, private /tmp, no new privileges; FLEETPULSE_HOME "
        "writable). Prints the files and the commands that install them.",
    )
    units.add_argument(
        "--output",
        type=Path,
        default=systemd.DEFAULT_OUTPUT,
        help=f"folder the unit files go to (default ./{systemd.DEFAULT_OUTPUT})",
    )
    units.add_argument(
        "--user",
        default=systemd.DEFAULT_USER,
        help=f"system user the services run as (default {systemd.DEFAULT_USER}); the backup "
        "schedule needs the user owning the PostgreSQL cluster",
    )
    units.add_argument(
        "--env-file",
        type=Path,
        default=systemd.DEFAULT_ENV_FILE,
        help=f"FLEETPULSE_* settings of every service (default {systemd.DEFAULT_ENV_FILE}); "
        "<its folder>/<service>.env, if present, is read after it",
    )
    units.add_argument(
        "--home",
        type=Path,
        default=systemd.DEFAULT_HOME,
        help=f"FLEETPULSE_HOME of the services, the one folder they may write "
        f"(default {systemd.DEFAULT_HOME}, made by systemd)",
    )
    units.add_argument(
        "--read-write",
        type=Path,
        action="append",
        default=[],
        metavar="DIR",
        help="another folder the services may write (e.g. FLEETPULSE_BACKUP_REPO_PATH); repeatable",
    )
    units.add_argument(
        "--services",
        metavar="NAME[,NAME...]",
        help=f"which units: {', '.join(s.name for s in systemd.SERVICES)} or all (default: "
        f"{', '.join(s.name for s in systemd.SERVICES if s.default)})",
    )
    units.add_argument(
        "--executable",
        type=Path,
        help="the `fleetpulse` script ExecStart runs (default: the one installed beside this "
        "Python, else the one on PATH)",
    )
    units.set_defaults(func=_systemd)

    demo = sub.add_parser(
        "demo",
        help="the whole pipeline on the local stack, with live numbers (what `make demo` runs)",
        description="Brings the stack up, registers this machine and the simulated hosts, "
        "creates a demo admin, runs the agent, simulator, stream worker, sink and registry as "
        "child processes (logs under <home>/logs) and shows live numbers read from Kafka and "
        "PostgreSQL. A child that exits is started again, after a delay that doubles with "
        "each exit in a row (1 s up to 30 s). Ctrl-C (or SIGTERM) stops every child and "
        "restarts none; a re-run reuses the stack and its data.",
    )
    demo.add_argument("--hosts", type=int, help="simulated hosts (default FLEETPULSE_HOSTS, 200)")
    demo.add_argument("--seed", type=int, help="seed of the simulated fleet (default 42)")
    demo.add_argument(
        "--seconds", type=float, help="stop everything after this many seconds (default: Ctrl-C)"
    )
    demo.set_defaults(func=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from pydantic import ValidationError

    args = build_parser().parse_args(argv)
    configure_logging()
    handler: Handler = args.func
    try:
        return handler(args)
    except ValidationError as exc:
        print(
            f"fleetpulse: error: invalid setting: {_describe_settings_error(exc)}", file=sys.stderr
        )
        return 2
    except (FleetPulseError, FileNotFoundError) as exc:
        print(f"fleetpulse: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _describe_settings_error(exc: Exception) -> str:
    from pydantic import ValidationError

    assert isinstance(exc, ValidationError)
    return "; ".join(
        f"FLEETPULSE_{'_'.join(str(p) for p in e['loc']).upper()}: {e['msg']}"
        for e in exc.errors(include_url=False, include_input=False)
    )


if __name__ == "__main__":
    sys.exit(main())
