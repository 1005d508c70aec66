"""Requests generated from the OpenAPI document against a real flagpost: never a server
error, and every answer is one the document describes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from service.ops import OPENAPI_PATH
from tests.service.process import running_service

SCHEMA = schemathesis.openapi.from_path(str(OPENAPI_PATH))
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


@pytest.fixture(scope="module")
def base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    demo = Path(__file__).resolve().parents[2] / "rules" / "examples" / "demo.json"
    with running_service(
        tmp_path_factory.mktemp("fuzz"), demo, FLAGPOST_WEBHOOK_SECRET="fuzz-secret-0123"
    ) as url:
        yield url


@SCHEMA.exclude(path="/v1/config/stream").parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_generated_requests(case: Any, base_url: str) -> None:
    """Whatever the generated request, the answer is documented and never a 5xx."""
    case.call_and_validate(base_url=base_url, checks=CHECKS)
