"""The standalone build's runtime hook gives the managed process the environment espm was started with."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

HOOK = Path(__file__).resolve().parents[2] / "tools" / "standalone" / "rthook_environment.py"
# Run the hook as the frozen program does (first thing, at module level), then show what a child
# started afterwards would inherit.
SHOW = f"exec(open({str(HOOK)!r}).read()); import os, json; print(json.dumps(dict(os.environ)))"


def _after_hook(env: dict[str, str]) -> dict[str, str]:
    done = subprocess.run([sys.executable, "-c", SHOW], env=env, capture_output=True, text=True, check=True)
    out: dict[str, str] = json.loads(done.stdout)
    return out


def test_the_bootloaders_library_path_and_markers_are_taken_out() -> None:
    env = _after_hook(
        {
            "LD_LIBRARY_PATH": "/opt/espm/espm-lib",
            "_PYI_ARCHIVE_FILE": "/opt/espm/espm",
            "_PYI_PARENT_PROCESS_LEVEL": "1",
            "ES_JAVA_OPTS": "-Xms1g",
        }
    )
    assert "LD_LIBRARY_PATH" not in env
    assert not [name for name in env if name.startswith("_PYI_")]
    assert env["ES_JAVA_OPTS"] == "-Xms1g"


def test_a_library_path_the_user_set_is_given_back() -> None:
    env = _after_hook(
        {"LD_LIBRARY_PATH": "/opt/espm/espm-lib:/usr/local/lib", "LD_LIBRARY_PATH_ORIG": "/usr/local/lib"}
    )
    assert env["LD_LIBRARY_PATH"] == "/usr/local/lib"
    assert "LD_LIBRARY_PATH_ORIG" not in env
