"""The OpenAPI document at ``/api/v1/openapi.json`` checked against the
running API by schemathesis: generated requests for every operation, valid
(positive) and invalid (negative), with an admin key, must get a documented
status, a documented content type and a body matching the documented
schema, and never a server error."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from engine.server import Engine
from engine.web.openapi import document

from .api_client import new_key
from .conftest import EngineFactory

RULES = """
rules:
  - {name: Answer, pattern: "answer", scenarios: [answer_wait_hangup]}
"""

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


async def test_openapi_document_is_served(make_engine: EngineFactory, http: aiohttp.ClientSession) -> None:
    """Check /api/v1/openapi.json needs no key and is the module's document."""
    engine = await make_engine(RULES)
    async with http.get(f"http://127.0.0.1:{engine.http_port}/api/v1/openapi.json") as resp:
        assert resp.status == 200
        assert await resp.json() == document()


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
async def test_api_conforms_to_its_openapi_document(make_engine: EngineFactory, mode: GenerationMode) -> None:
    """Check schemathesis' generated requests against the live API get
    documented answers and no server error."""
    engine: Engine = await make_engine(RULES)
    engine_key = new_key(engine, "admin")
    base = f"http://127.0.0.1:{engine.http_port}/api/v1"
    schema = schemathesis.openapi.from_dict(document())
    strategy = schema.as_strategy(mode)
    failures: list[str] = []

    @settings(max_examples=150, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(case=strategy)
    def run(case: Any) -> None:
        response = case.call(base_url=base, headers={"Authorization": f"Bearer {engine_key}"})
        try:
            case.validate_response(response, checks=CHECKS)
        except Exception as exc:  # collected, reported all at once below
            failures.append(f"{case.method} {case.formatted_path}: {exc}")
            raise

    await asyncio.to_thread(run)
    assert not failures
