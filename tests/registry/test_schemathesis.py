"""Property-based: schemathesis generates valid and invalid requests from the OpenAPI schema;
none may get a 500, and every answer matches the schema (bounded in examples and time)."""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from pydantic import SecretStr
from schemathesis.checks import CheckContext, not_a_server_error
from schemathesis.core.parameters import ParameterLocation
from schemathesis.core.transport import Response
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from registry.app import create_app
from registry.crypto import Keyring
from registry.settings import RegistrySettings
from tests.registry.harness import Api

pytestmark = pytest.mark.integration


@schemathesis.check
def body_and_path_negative_data_rejection(
    ctx: CheckContext, response: Response, case: schemathesis.Case[Any]
) -> bool | None:
    """Invalid bodies and path parameters must be refused. Not applied to headers (the test
    always sends the token) nor to unknown query parameters (ignored, as HTTP APIs do)."""
    data = case.meta.phase.data if case.meta else None
    locations = {m.parameter_location for m in getattr(data, "mutations", ())}
    if getattr(data, "parameter_location", None) is not None:
        locations.add(data.parameter_location)  # type: ignore[union-attr]
    if locations and locations <= {ParameterLocation.BODY, ParameterLocation.PATH}:
        result: bool | None = negative_data_rejection(ctx, response, case)
        return result
    return None


CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    body_and_path_negative_data_rejection,
]


# The schema the server serves, built without I/O from the same app (the lazy fixture loader
# does not run under pytest 9); requests go over HTTPS to the running server.
schema = schemathesis.openapi.from_dict(
    create_app(RegistrySettings(registry_keys=SecretStr("")), Keyring({1: bytes(32)})).openapi()
)


@schema.parametrize()
@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
@pytest.mark.timeout(240)
def test_no_request_gets_a_500(case: schemathesis.Case[Any], admin_token: str, api: Api) -> None:
    # Logging out with the shared token would end it for the cases after this one.
    headers = {} if case.path == "/logout" else {"Authorization": f"Bearer {admin_token}"}
    response = case.call_and_validate(
        base_url=api.base_url, headers=headers, checks=CHECKS, verify=str(api.ca)
    )
    api.seen.append(f"{response.status_code} {dict(response.headers)} {response.text}")
