"""JSON nested deeper than the parser goes is bad input like any other, never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from espm.keystore.elasticsearch import Answer, UnexpectedAnswer, _check
from espm.keystore.managed import read_managed

DEEP = b"[" * 100_000 + b"]" * 100_000


def test_a_deeply_nested_answer_reads_as_no_json() -> None:
    assert Answer(200, DEEP).json() is None


def test_a_deeply_nested_answer_is_an_unexpected_answer() -> None:
    # The soak drew this reload answer: the loop logged "reload failed unexpectedly" with a
    # RecursionError traceback instead of a named reason.
    with pytest.raises(UnexpectedAnswer, match="without JSON"):
        _check(Answer(200, DEEP), "POST /_nodes/_local/reload_secure_settings", lambda doc: None)


def test_a_deeply_nested_managed_names_file_is_a_warning(tmp_path: Path) -> None:
    path = tmp_path / "elasticsearch.keystore.managed"
    path.write_bytes(DEEP)
    names, problem = read_managed(path)
    assert names == set()
    assert problem is not None and "removed secrets may stay" in problem
