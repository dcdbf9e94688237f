"""Fuzz the web API from its own OpenAPI schema (schemathesis, bounded and deterministic): whatever a client sends,
the answer is never a 5xx, its status is documented for that route, and its body matches the declared schema."""

from __future__ import annotations

import shutil

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import checks as st_checks

from vlens.retrieval.index import IndexConfig, build_index

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def app(tmp_path_factory, shapes_dir, tiny_clip, tiny_blip, tiny_vit):
    from vlens.retrieval.model import DualEncoder
    from vlens.web.app import create_app

    enc = DualEncoder.from_spec(str(tiny_clip))
    base = tmp_path_factory.mktemp("fuzz")
    root = base / "photos"
    root.mkdir()
    for p in sorted((shapes_dir / "images").glob("test_*.png"))[:6]:
        shutil.copy(p, root / p.name)
    build_index(root, base / "idx", IndexConfig(model=str(tiny_clip)), embedder=(enc.encode_images, enc.dim),
                progress=False)
    return create_app(index=base / "idx", captioner=str(tiny_blip), backbone=str(tiny_vit),
                      max_upload_bytes=200_000)


CHECKS = [st_checks.not_a_server_error, st_checks.status_code_conformance,
          st_checks.response_schema_conformance, st_checks.content_type_conformance]


def test_api_never_fails_and_keeps_its_schema(app):
    """Every operation of the schema, 30 generated requests each (Hypothesis, derandomized: same requests every
    run), plus the examples schemathesis derives from the schema's own bounds."""
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    operations = [r.ok() for r in schema.get_all_operations()]
    assert len(operations) >= 7
    for op in operations:

        @given(case=op.as_strategy())
        @settings(max_examples=30, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        def fuzz(case):
            case.call_and_validate(checks=CHECKS)

        fuzz()
