"""Unit tests of the registry's request models: what a body may hold, what is refused and
with which message (without echoing the input)."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from registry.errors import Invalid
from registry.models import ServerCreate, ServerUpdate, UserCreate, UserUpdate


def _server(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": "web",
        "hostname": "web-01.example.com",
        "username": "deploy",
        "password": "ssh-secret-1",
    }
    body.update(overrides)
    return body


def _refusal(model: type[Any], body: dict[str, Any]) -> str:
    with pytest.raises(ValidationError) as caught:
        model.model_validate(body)
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
        for e in caught.value.errors(include_input=False, include_url=False)
    )


def test_a_user_email_is_lowercased_and_the_role_defaults_to_user() -> None:
    user = UserCreate.model_validate(
        {"email": "Ops@Example.COM", "name": "Ops", "password": "long-enough-1"}
    )
    assert user.email == "ops@example.com" and user.role.value == "user" and user.active


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"password": "short"}, "password"),
        ({"name": "a\x00b"}, "name"),
        ({"email": "not-an-address"}, "email"),
        ({"role": "root"}, "role"),
        ({"extra": 1}, "extra"),
    ],
)
def test_a_bad_user_names_the_field_without_the_input(body: dict[str, Any], field: str) -> None:
    base = {"email": "a@example.com", "name": "A", "password": "long-enough-1"}
    message = _refusal(UserCreate, {**base, **body})
    assert message.startswith(field)
    assert "a\x00b" not in message and "short" not in message.split(":", 1)[1]


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"hostname": "-web"}, "hostname"),
        ({"hostname": "web..x/1"}, "hostname"),
        ({"port": 0}, "port"),
        ({"port": "22"}, "port"),  # strict: JSON numbers only
        ({"ip_address": 167772167}, "ip_address"),  # an address is a string
        ({"ip_address": "fe80::1%eth0"}, "ip_address"),  # no zone index
        ({"server_type": "solaris"}, "server_type"),
    ],
)
def test_a_bad_server_names_the_field(overrides: dict[str, Any], field: str) -> None:
    assert _refusal(ServerCreate, _server(**overrides)).startswith(field)


def test_a_server_keeps_its_address_and_defaults() -> None:
    server = ServerCreate.model_validate(_server(ip_address="10.0.0.7"))
    assert str(server.ip_address) == "10.0.0.7" and server.port == 22


def test_changes_are_only_what_was_sent_without_the_password() -> None:
    update = UserUpdate.model_validate({"name": "New", "password": "long-enough-2"})
    assert update.changes() == {"name": "New"}
    assert ServerUpdate.model_validate({"ip_address": None}).changes() == {"ip_address": None}


@pytest.mark.parametrize(
    ("model", "body"), [(UserUpdate, {"name": None}), (ServerUpdate, {"hostname": None})]
)
def test_a_null_its_column_refuses_is_invalid(model: type[Any], body: dict[str, Any]) -> None:
    with pytest.raises(Invalid, match=f"{next(iter(body))}: may not be null"):
        model.model_validate(body).changes()
