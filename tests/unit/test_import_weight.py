"""The API and the Elasticsearch client do not load modules they can do without (each costs RSS)."""

from __future__ import annotations

import subprocess
import sys

CHECK = """
import sys
from espm.api.listener import open_listener
from espm.api.routes import Request, Router
import espm.api.server, espm.keystore.elasticsearch
open_listener("localhost", 0).close()
Router.openapi(None, Request("GET", "/openapi.json"))
print(sorted(m for m in sys.modules if m in {NAMES}))
"""
# http: 256 KiB for reason phrases; importlib.resources: 1 MiB (zipfile...) to read one file;
# encodings.idna: half a MiB (unicodedata, stringprep) to encode an ASCII host name.
AVOIDED = {"http", "importlib.resources", "zipfile", "encodings.idna", "unicodedata"}


def test_the_api_does_without_heavy_modules() -> None:
    out = subprocess.run(
        [sys.executable, "-c", CHECK.replace("{NAMES}", repr(AVOIDED))],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
