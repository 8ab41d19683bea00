"""What the API takes and returns: `XCreate` (POST bodies), `XUpdate` (PATCH bodies, every field
optional), `XPublic` (responses). Passwords appear only in Create/Update models, as `SecretStr`,
and never in a response. String limits are the columns' VARCHAR sizes, so the database never
sees a value it would refuse.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from enum import StrEnum
from ipaddress import IPv4Address, IPv6Address
from typing import Annotated, Any, ClassVar, Literal
from uuid import UUID

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    StrictBool,
)

from registry.errors import Invalid
from registry.permissions import Role
from sinks.fleet import StatPoint
from sinks.read import SeriesPoint


def _storable(value: str) -> str:
    # PostgreSQL text holds neither NUL nor lone surrogates (JSON can carry both).
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode text") from None
    return value


def _storable_secret(value: SecretStr) -> SecretStr:
    _storable(value.get_secret_value())
    return value


PASSWORD_MIN, PASSWORD_MAX = 8, 1024


def _secret_length(shortest: int) -> Callable[[SecretStr], SecretStr]:
    # Pydantic's own length message for SecretStr speaks of "items".
    def check(value: SecretStr) -> SecretStr:
        if not shortest <= len(value.get_secret_value()) <= PASSWORD_MAX:
            raise ValueError(f"must be {shortest} to {PASSWORD_MAX} characters long")
        return value

    return check


def _lower(value: str) -> str:
    return value.lower()


Name = Annotated[str, Field(min_length=1, max_length=255), AfterValidator(_storable)]
Email = Annotated[
    str,
    Field(
        min_length=3,
        max_length=255,
        pattern=r"^[^@\s]+@[^@\s]+$",
        description="E-mail address (compared case-insensitively, stored lower-case).",
        examples=["ada@example.com"],
    ),
    AfterValidator(_storable),
    AfterValidator(_lower),
]


Password = Annotated[
    SecretStr,
    Field(
        description="Write-only; never returned.",
        json_schema_extra={"minLength": PASSWORD_MIN, "maxLength": PASSWORD_MAX},
    ),
    AfterValidator(_secret_length(PASSWORD_MIN)),
    AfterValidator(_storable_secret),
]
#: A password as typed at login: checked, never stored, so no minimum.
GivenPassword = Annotated[
    SecretStr,
    Field(json_schema_extra={"maxLength": PASSWORD_MAX}),
    AfterValidator(_secret_length(0)),
    AfterValidator(_storable_secret),
]
Hostname = Annotated[
    str,
    Field(
        min_length=1,
        max_length=255,
        pattern=r"^[A-Za-z0-9_]([A-Za-z0-9_.-]*[A-Za-z0-9_])?$",
        description="DNS name or address the server is reached at; unique.",
        examples=["web-01.example.com"],
    ),
]
Port = Annotated[int, Field(ge=1, le=65535, strict=True, description="SSH port.")]


def _no_scope(ip: IPv4Address | IPv6Address) -> IPv4Address | IPv6Address:
    # The column holds 45 characters; a zone index (fe80::1%eth0) has no bound.
    if isinstance(ip, IPv6Address) and ip.scope_id is not None:
        raise ValueError("an IPv6 zone index (%…) is not accepted")
    return ip


def _text_only(value: object) -> object:
    # Pydantic would take 167772167 for 10.0.0.7; JSON input names addresses as strings.
    if not isinstance(value, str | IPv4Address | IPv6Address):
        raise ValueError("must be an IP address as a string")
    return value


IpAddress = Annotated[
    IPv4Address | IPv6Address,
    BeforeValidator(_text_only),
    AfterValidator(_no_scope),
    Field(description="IPv4 or IPv6 address (no zone index)."),
]


class ServerType(StrEnum):
    LINUX = "linux"
    WINDOWS = "windows"
    MACOS = "macos"
    OTHER = "other"


class ServerCategory(StrEnum):
    PHYSICAL = "physical"
    VIRTUAL = "virtual"
    CONTAINER = "container"
    CLOUD = "cloud"


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Update(_In):
    """A PATCH body: a field left out keeps its value; `null` is refused but in `NULLABLE`."""

    NULLABLE: ClassVar[frozenset[str]] = frozenset()

    def changes(self) -> dict[str, Any]:
        """Column → value of each field sent (enums and addresses as text), the password left
        out: the caller hashes or encrypts it. `Invalid` for a null its column refuses."""
        sent = self.model_dump(mode="json", exclude_unset=True, exclude={"password"})
        for key, value in sent.items():
            if value is None and key not in self.NULLABLE:
                raise Invalid(f"{key}: may not be null")
        return sent


# -- auth -----------------------------------------------------------------------------------------
class LoginRequest(_In):
    email: Annotated[
        str,
        Field(max_length=255, description="The account's e-mail address."),
        AfterValidator(_storable),
    ]
    password: GivenPassword
    provider: Literal["email"] = Field(
        default="email",
        description="Only `email` (password) logins exist; other providers are not built yet.",
    )


class Token(BaseModel):
    access_token: str = Field(description="Send as `Authorization: Bearer <token>`.")
    token_type: Literal["bearer"] = "bearer"  # noqa: S105 - the scheme's name, not a secret
    expires_at: datetime


# -- users ----------------------------------------------------------------------------------------
class UserCreate(_In):
    email: Email
    name: Name
    password: Password
    role: Role = Role.USER
    active: StrictBool = True
    provider: Literal["email"] = Field(
        default="email", description="Only `email` exists until another provider is built."
    )


class UserUpdate(_Update):
    email: Email | None = None
    name: Name | None = None
    password: Password | None = None
    role: Role | None = None
    active: StrictBool | None = Field(
        default=None, description="`false` deactivates the user and ends their sessions."
    )


class UpdatePassword(_In):
    current_password: GivenPassword
    new_password: Password


class UserPublic(BaseModel):
    id: str
    email: str
    name: str
    role: Role
    active: bool
    provider: Literal["email"]
    last_login_at: datetime | None
    created_at: datetime


class UsersPublic(BaseModel):
    data: list[UserPublic]
    count: int


# -- servers --------------------------------------------------------------------------------------
class ServerCreate(_In):
    id: UUID | None = Field(
        default=None,
        description="The id the host's agent sends as server_id; a new UUID when omitted.",
    )
    name: Name
    hostname: Hostname
    ip_address: IpAddress | None = None
    port: Port = 22
    username: Name
    password: Password
    server_type: ServerType = ServerType.LINUX
    server_category: ServerCategory = ServerCategory.PHYSICAL


class ServerUpdate(_Update):
    NULLABLE = frozenset({"ip_address"})

    name: Name | None = None
    hostname: Hostname | None = None
    ip_address: IpAddress | None = None
    port: Port | None = None
    username: Name | None = None
    password: Password | None = None
    server_type: ServerType | None = None
    server_category: ServerCategory | None = None


class ServerPublic(BaseModel):
    id: str
    name: str
    hostname: str
    ip_address: str | None
    port: int
    username: str
    server_type: ServerType
    server_category: ServerCategory
    is_online: bool
    last_seen_at: datetime | None
    created_at: datetime


class ServersPublic(BaseModel):
    data: list[ServerPublic]
    count: int


# -- metrics --------------------------------------------------------------------------------------
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(9000, 1, 1, tzinfo=UTC)


class MetricSeries(BaseModel):
    server_id: str
    step: str
    start: datetime = Field(serialization_alias="from")
    end: datetime = Field(serialization_alias="to")
    points: list[SeriesPoint] = Field(
        description="One per step, oldest first; an empty bucket has 0 samples and null values."
    )


class StatSeries(BaseModel):
    """One statistic of every metric per bucket: of one server (`server_id`), or across the
    fleet or the listed `servers`."""

    server_id: str | None = None
    servers: list[str] | None = Field(
        default=None, description="The servers asked for (fleet query; null: all)."
    )
    step: str
    stat: str
    start: datetime = Field(serialization_alias="from")
    end: datetime = Field(serialization_alias="to")
    points: list[StatPoint] = Field(
        description="One per step, oldest first; an empty bucket has 0 samples and null values."
    )


class Message(BaseModel):
    detail: str


class FieldError(BaseModel):
    loc: list[str | int] = Field(description="Where: `body`, `query`, `path` and the field.")
    msg: str
    type: str


class ValidationProblem(BaseModel):
    """A 422: `detail` names every bad field; the values sent are never echoed."""

    detail: str = Field(examples=["hostname: String should have at most 255 characters"])
    errors: list[FieldError] = Field(default_factory=list)
