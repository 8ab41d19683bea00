"""`fleetpulse backup …`: each command prints what it did in a line or two (`--json`: the same
as one JSON object, for scripts)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

Handler = Callable[[argparse.Namespace], int]


def _say(args: argparse.Namespace, lines: list[str], data: dict[str, Any]) -> int:
    if args.json:
        print(json.dumps(data, indent=1, default=str))
    else:
        print("\n".join(lines))
    return 0


def _progress(stage: str) -> None:
    """A long command's stages, on stderr when it is a terminal (stdout carries the result;
    a script reads only that)."""
    if sys.stderr.isatty():
        print(f"… {stage}", file=sys.stderr, flush=True)


def _settings() -> Any:
    from infra.backup.settings import BackupSettings

    return BackupSettings()


def _run(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from infra.backup import base

    _progress(f"taking a {args.type} backup with pgBackRest")
    backup, seconds = base.take(_settings(), args.type)
    return _say(
        args,
        [f"{backup.line()}; took {seconds:.1f} s (retention applied)"],
        {**asdict(backup), "seconds": round(seconds, 2)},
    )


def _dump(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from infra.backup import dumps

    _progress("pg_dump -Fc of the database")
    made = dumps.dump(_settings())
    return _say(args, [made.line()], asdict(made))


def _list(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from infra.backup import base, dumps

    settings = _settings()
    repo = base.repository(settings)
    found = dumps.dumps(settings)
    lines = [b.line() for b in repo.backups] or ["no base backup yet (`fleetpulse backup run`)"]
    lines += [d.line() for d in found] or [f"no dump yet in {settings.dumps}"]
    lines.append(
        f"repository {settings.backup_repo}: {(repo.size or 0) / 1e6:,.1f} MB; WAL archived "
        f"{repo.wal_min or '-'} to {repo.wal_max or '-'}; a restore reaches from "
        f"{repo.earliest or '- (no backup)'} to {repo.latest or 'the last archived WAL'}"
    )
    return _say(args, lines, {**repo.asdict(), "dumps": [asdict(d) for d in found]})


def _restore(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from infra.backup import base

    done = base.restore(
        _settings(), args.to, args.into, args.port, promote=args.promote, progress=_progress
    )
    return _say(
        args,
        [done.line(), f"stop it with `fleetpulse backup stop {done.into}`"],
        asdict(done),
    )


def _stop(args: argparse.Namespace) -> int:
    from infra.backup import base

    stopped = base.stop_restored(args.dir.resolve())
    state = "stopped" if stopped else "was not running"
    return _say(args, [f"restored cluster in {args.dir}: {state}"], {"stopped": stopped})


def _verify(args: argparse.Namespace) -> int:
    from infra.backup import dumps

    _progress("restoring the newest dump into a scratch database")
    done = dumps.verify(_settings())
    return _say(args, [done.line()], done.asdict())


def _schedule(args: argparse.Namespace) -> int:
    from infra.backup.schedule import BackupSchedule
    from runtime.service import run_service

    settings = _settings()
    return run_service(BackupSchedule(settings), settings)


def add_commands(sub: Any) -> None:
    """`fleetpulse backup` and its actions, on the top-level subparsers `sub`."""
    backup = sub.add_parser(
        "backup",
        help="base backups, WAL archive and dumps of the local cluster; point-in-time restore",
        description="pgBackRest's base backups and WAL archive (encrypted, in "
        "FLEETPULSE_BACKUP_REPO_PATH) and daily pg_dump files (FLEETPULSE_BACKUP_DUMP_PATH). "
        "A restore goes into a new folder and port, never over the running cluster.",
    )
    actions = backup.add_subparsers(dest="action", required=True, metavar="ACTION")

    def action(name: str, handler: Handler, **kw: Any) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = actions.add_parser(name, **kw)
        p.add_argument("--json", action="store_true", help="print the result as JSON")
        p.set_defaults(func=handler)
        return p

    run = action(
        "run",
        _run,
        help="take a base backup now (the retention is applied after it)",
        description="A base backup with pgBackRest; full backups past "
        "FLEETPULSE_BACKUP_RETENTION_FULL are expired, with the WAL only they needed.",
    )
    run.add_argument(
        "--type",
        choices=["full", "diff", "incr"],
        default="full",
        help="full, differential (since the last full) or incremental (since the last "
        "backup); default full",
    )
    action(
        "dump",
        _dump,
        help="pg_dump -Fc of the database, one per day, the newest 7 kept, with a manifest",
    )
    action(
        "list",
        _list,
        help="the backups and dumps, the WAL archived, how far a restore can reach",
    )
    restore = action(
        "restore",
        _restore,
        help="restore to a time (or the latest) into a new cluster beside the running one",
        description="Restores the repository into a new, empty folder as a new cluster on "
        "its own port, starts it and leaves it running for inspection (psql -h DIR -p PORT "
        "-U postgres). Read-only unless --promote. Nothing is written when a check fails.",
    )
    restore.add_argument(
        "--to",
        required=True,
        metavar="TIME|latest",
        help="an ISO 8601 time (UTC unless it says otherwise) or `latest`",
    )
    restore.add_argument(
        "--into", required=True, type=Path, metavar="DIR", help="a new or empty folder"
    )
    restore.add_argument("--port", required=True, type=int, help="a free port for it")
    restore.add_argument(
        "--promote", action="store_true", help="end recovery there: the copy becomes writable"
    )
    stop = action("stop", _stop, help="stop a cluster `restore` started (its files stay)")
    stop.add_argument("dir", type=Path, metavar="DIR", help="the folder it was restored into")
    action(
        "verify",
        _verify,
        help="restore the newest dump into a scratch database, compare, drop it",
        description="Restores the newest dump into a scratch database and compares its rows "
        "per table and its metrics_snapshots checksum with what the source held when it was "
        "dumped (the dump's manifest); then drops the scratch database. Exit 1 on a difference.",
    )
    sched = actions.add_parser(
        "schedule",
        help="run the backups on a timetable (a service: /metrics, stops on SIGTERM)",
        description="Daily full backup and dump at FLEETPULSE_BACKUP_DAILY_AT (UTC), "
        "a differential one every FLEETPULSE_BACKUP_DIFF_EVERY hours; retries failures with "
        "backoff; serves the age of the newest backup and of the last archived WAL on "
        "/metrics (FLEETPULSE_METRICS_PORT, default 9475).",
    )
    sched.set_defaults(func=_schedule)
