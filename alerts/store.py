"""The alert tables in PostgreSQL (migration 0008): the rules the registry manages, and the
evaluator's state, position and history (with the outbox columns of its outputs)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from alerts.engine import AlertState, Changes
from alerts.rules import Rule, RulePublic, RuleSpec
from registry.errors import Invalid, NotFound
from registry.store import Conn, Connection

#: The outputs an event waits for, each its column of `alert_events`.
Output = Literal["published_at", "alertmanager_at", "webhook_at"]
OUTPUTS: tuple[Output, ...] = ("published_at", "alertmanager_at", "webhook_at")

_RULE_COLUMNS = (
    "name",
    "kind",
    "metric",
    "stat",
    "resolution",
    "op",
    "value",
    "for_seconds",
    "severity",
    "servers",
)


class RuleNotFound(NotFound):
    """No rule has the id given (a 404)."""


class UnknownServers(Invalid):
    """A rule names servers the inventory does not have (a 422)."""


# -- rules (the registry) ----------------------------------------------------------------------
async def _check_servers(conn: Conn, spec: RuleSpec) -> None:
    if spec.servers is None:
        return
    ids = [str(s) for s in spec.servers]
    known = {r["id"] for r in await conn.fetch("SELECT id FROM servers WHERE id = ANY($1)", ids)}
    missing = [s for s in ids if s not in known]
    if missing:
        raise UnknownServers(f"servers: not in the inventory: {', '.join(missing[:5])}")


def _values(spec: RuleSpec) -> list[Any]:
    columns = spec.columns()
    if columns["servers"] is not None:
        columns["servers"] = [str(s) for s in columns["servers"]]
    return [columns[c] for c in _RULE_COLUMNS]


async def create_rule(conn: Conn, spec: RuleSpec) -> RulePublic:
    await _check_servers(conn, spec)
    placeholders = ", ".join(f"${i}" for i in range(1, len(_RULE_COLUMNS) + 1))
    row = await conn.fetchrow(
        f"INSERT INTO alert_rules ({', '.join(_RULE_COLUMNS)}) VALUES ({placeholders}) RETURNING *",
        *_values(spec),
    )
    assert row is not None
    return RulePublic.model_validate(dict(row))


async def replace_rule(conn: Conn, rule_id: int, spec: RuleSpec) -> RulePublic:
    """Replace a rule; its revision grows (the evaluator starts it afresh)."""
    await _check_servers(conn, spec)
    sets = ", ".join(f"{c} = ${i}" for i, c in enumerate(_RULE_COLUMNS, start=2))
    row = await conn.fetchrow(
        f"UPDATE alert_rules SET {sets}, revision = revision + 1, updated_at = now() "
        "WHERE id = $1 RETURNING *",
        rule_id,
        *_values(spec),
    )
    if row is None:
        raise RuleNotFound("alert rule not found")
    return RulePublic.model_validate(dict(row))


async def get_rule(conn: Conn, rule_id: int) -> RulePublic:
    row = await conn.fetchrow("SELECT * FROM alert_rules WHERE id = $1", rule_id)
    if row is None:
        raise RuleNotFound("alert rule not found")
    return RulePublic.model_validate(dict(row))


async def list_rules(conn: Conn) -> list[RulePublic]:
    rows = await conn.fetch("SELECT * FROM alert_rules ORDER BY id")
    return [RulePublic.model_validate(dict(r)) for r in rows]


async def delete_rule(conn: Conn, rule_id: int) -> None:
    if await conn.execute("DELETE FROM alert_rules WHERE id = $1", rule_id) == "DELETE 0":
        raise RuleNotFound("alert rule not found")


@dataclass(frozen=True)
class StoredEvent:
    seq: int
    body: dict[str, Any]


async def list_events(
    conn: Conn,
    *,
    server_id: str | None = None,
    rule_id: int | None = None,
    status: str | None = None,
    before: int | None = None,
    limit: int = 100,
) -> list[StoredEvent]:
    """The alert history, newest first; `before` a `seq` for the next page."""
    rows = await conn.fetch(
        """
        SELECT seq, body FROM alert_events
        WHERE ($1::varchar IS NULL OR server_id = $1)
          AND ($2::bigint IS NULL OR rule_id = $2)
          AND ($3::varchar IS NULL OR status = $3)
          AND ($4::bigint IS NULL OR seq < $4)
        ORDER BY seq DESC LIMIT $5
        """,
        server_id,
        rule_id,
        status,
        before,
        limit,
    )
    return [StoredEvent(r["seq"], json.loads(r["body"])) for r in rows]


async def list_firing(conn: Conn) -> list[dict[str, Any]]:
    """The alerts firing now: each one's latest firing event, while no resolved one followed
    (the evaluator keeps exactly these as `firing` in `alert_state`)."""
    rows = await conn.fetch(
        """
        SELECT DISTINCT ON (e.fingerprint) e.body
        FROM alert_state s
        JOIN alert_events e ON e.rule_id = s.rule_id AND e.server_id = s.server_id
             AND e.status = 'firing' AND e.starts_at = s.fired_at
        WHERE s.state = 'firing'
        ORDER BY e.fingerprint, e.seq DESC
        """
    )
    return [json.loads(r["body"]) for r in rows]


# -- the evaluator -----------------------------------------------------------------------------
async def load_rules(conn: Conn) -> list[Rule]:
    return [Rule.from_row(r) for r in await conn.fetch("SELECT * FROM alert_rules ORDER BY id")]


async def load_servers(conn: Conn) -> dict[str, datetime | None]:
    """Every server of the inventory, with when it was last seen."""
    rows = await conn.fetch("SELECT id, last_seen_at FROM servers")
    return {r["id"]: r["last_seen_at"] for r in rows}


async def load_states(conn: Conn) -> list[AlertState]:
    rows = await conn.fetch("SELECT * FROM alert_state")
    return [
        AlertState(
            rule_id=r["rule_id"],
            server_id=r["server_id"],
            rule_revision=r["rule_revision"],
            state=r["state"],
            since=r["since"],
            fired_at=r["fired_at"],
            last_window_end=r["last_window_end"],
            value=r["value"],
        )
        for r in rows
    ]


async def load_offsets(conn: Conn) -> dict[tuple[str, int], int]:
    rows = await conn.fetch("SELECT topic, partition, next_offset FROM alert_offsets")
    return {(r["topic"], r["partition"]): r["next_offset"] for r in rows}


async def save(conn: Connection, changes: Changes, offsets: dict[tuple[str, int], int]) -> None:
    """Store changed states, the new events and the input position, in one transaction: after
    a crash the evaluator resumes from a position its state agrees with."""
    async with conn.transaction():
        if changes.removed:
            await conn.executemany(
                "DELETE FROM alert_state WHERE rule_id = $1 AND server_id = $2", changes.removed
            )
        if changes.states:
            await conn.executemany(
                """
                INSERT INTO alert_state (rule_id, server_id, rule_revision, state, since,
                                         fired_at, last_window_end, value)
                VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                ON CONFLICT (rule_id, server_id) DO UPDATE SET
                    rule_revision = EXCLUDED.rule_revision, state = EXCLUDED.state,
                    since = EXCLUDED.since, fired_at = EXCLUDED.fired_at,
                    last_window_end = EXCLUDED.last_window_end, value = EXCLUDED.value
                """,
                [
                    (
                        s.rule_id,
                        s.server_id,
                        s.rule_revision,
                        s.state,
                        s.since,
                        s.fired_at,
                        s.last_window_end,
                        s.value,
                    )
                    for s in changes.states
                ],
            )
        if changes.events:
            await conn.executemany(
                """
                INSERT INTO alert_events (event_id, fingerprint, rule_id, server_id, status,
                                          starts_at, ends_at, body)
                VALUES ($1, $2, $3, $4, $5, $6, $7, $8::jsonb)
                ON CONFLICT (event_id) DO NOTHING
                """,
                [
                    (
                        e.event_id,
                        e.fingerprint,
                        e.rule_id,
                        e.server_id,
                        e.status.value,
                        e.starts_at,
                        e.ends_at,
                        e.model_dump_json(),
                    )
                    for e in changes.events
                ],
            )
        if offsets:
            await conn.executemany(
                """
                INSERT INTO alert_offsets (topic, partition, next_offset) VALUES ($1, $2, $3)
                ON CONFLICT (topic, partition) DO UPDATE SET next_offset = EXCLUDED.next_offset
                """,
                [(t, p, o) for (t, p), o in offsets.items()],
            )


async def undelivered(conn: Conn, output: Output, limit: int = 500) -> list[tuple[str, str]]:
    """Events `output` has not taken yet, oldest first: (event id, the event's JSON)."""
    rows = await conn.fetch(
        f"SELECT event_id, body FROM alert_events WHERE {output} IS NULL ORDER BY seq LIMIT $1",
        limit,
    )
    return [(str(r["event_id"]), r["body"]) for r in rows]


async def delivered(conn: Conn, output: Output, event_ids: Sequence[str]) -> None:
    await conn.execute(
        f"UPDATE alert_events SET {output} = now() WHERE event_id = ANY($1::uuid[])",
        list(event_ids),
    )


async def skip_outputs(conn: Conn, outputs: Iterable[Output]) -> None:
    """Mark every event as taken by outputs that are not configured, so that one configured
    later does not get the whole history at once."""
    for output in outputs:
        await conn.execute(f"UPDATE alert_events SET {output} = now() WHERE {output} IS NULL")
