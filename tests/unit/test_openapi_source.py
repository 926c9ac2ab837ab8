"""The shipped OpenAPI document is the one tools/openapi.py writes: nobody edits it by hand."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_openapi_json_is_generated_from_tools_openapi() -> None:
    spec = importlib.util.spec_from_file_location("espm_openapi_tool", ROOT / "tools" / "openapi.py")
    assert spec is not None and spec.loader is not None
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    shipped = json.loads((ROOT / "src" / "espm" / "openapi.json").read_text())
    assert shipped == tool.document(), "src/espm/openapi.json differs: run python tools/openapi.py"
