"""Who may do what: the seed's roles and the permissions each one holds.

Every route names the one permission it needs (`require(Permission.…)` in its signature);
this table is the only place that says which role holds it.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final


class Role(StrEnum):
    """The seed's `user_role` enum."""

    ADMIN = "admin"
    USER = "user"


class Permission(StrEnum):
    SELF = "self"  # one's own account: whoami, logout
    SERVERS_READ = "servers:read"
    SERVERS_MANAGE = "servers:manage"
    METRICS_READ = "metrics:read"
    USERS_MANAGE = "users:manage"
    ALERTS_READ = "alerts:read"
    ALERTS_MANAGE = "alerts:manage"


ROLE_PERMISSIONS: Final[dict[Role, frozenset[Permission]]] = {
    Role.ADMIN: frozenset(Permission),
    Role.USER: frozenset(
        {
            Permission.SELF,
            Permission.SERVERS_READ,
            Permission.METRICS_READ,
            Permission.ALERTS_READ,
        }
    ),
}


def allowed(role: Role, permission: Permission) -> bool:
    return permission in ROLE_PERMISSIONS[role]
