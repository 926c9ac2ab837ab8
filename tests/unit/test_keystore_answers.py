"""Elasticsearch's answers checked as a table: the reload verdict and the version of GET /."""

from __future__ import annotations

from typing import Any

import pytest

from espm.keystore.answers import error_reason, reload_problems, root_version

DIGEST = "ab" * 32
OK_NODES = {"_nodes": {"total": 1, "successful": 1, "failed": 0}, "cluster_name": "c"}

RELOADS: dict[str, tuple[int, Any, str | None, list[str]]] = {
    # name: (status, document, digest written, problems)
    "success": (200, {**OK_NODES, "nodes": {"n1": {"name": "node-1"}}}, DIGEST, []),
    "success without nodes": (200, OK_NODES, None, []),
    "401 with its reason": (
        401,
        {"error": {"type": "security_exception", "reason": "unable to authenticate user [u]"}},
        None,
        ["HTTP 401: unable to authenticate user [u]"],
    ),
    "500 with a string error": (500, {"error": "boom"}, None, ["HTTP 500: boom"]),
    "503 not JSON": (503, None, None, ["HTTP 503"]),
    "200 not an object": (200, ["nodes"], None, ["the answer is not a JSON object"]),
    "a node failed": (
        200,
        {"_nodes": {"total": 2, "failed": 1, "failures": [{"reason": "Failed node [x]"}]}, "nodes": {}},
        None,
        ["1 node(s) failed", "Failed node [x]"],
    ),
    "reload_exception inside a 200": (
        200,
        {**OK_NODES, "nodes": {"n1": {"name": "node-1", "reload_exception": {"reason": "wrong password"}}}},
        None,
        ["node node-1: wrong password"],
    ),
    "reload_exception as text, node without a name": (
        200,
        {**OK_NODES, "nodes": {"id-7": {"reload_exception": "broken"}}},
        None,
        ["node id-7: broken"],
    ),
    "9.3 digest of the file written": (
        200,
        {**OK_NODES, "nodes": {"n": {"keystore_digest": DIGEST}}},
        DIGEST,
        [],
    ),
    "9.3 digest of another file": (
        200,
        {**OK_NODES, "nodes": {"n": {"name": "x", "keystore_digest": "cd" * 32}}},
        DIGEST,
        [f"node x loaded a keystore with digest {'cd' * 32}, not the one written ({DIGEST})"],
    ),
    "a digest, but nothing written by us yet": (
        200,
        {**OK_NODES, "nodes": {"n": {"keystore_digest": "x"}}},
        None,
        [],
    ),
    "unexpected types are not a traceback": (
        200,
        {"_nodes": [1], "nodes": ["n1"]},
        None,
        [],
    ),
    "failures of an unexpected type": (
        200,
        {"_nodes": {"failed": 2, "failures": {"x": 1}}},
        None,
        ["2 node(s) failed"],
    ),
    "a node that is not an object": (200, {**OK_NODES, "nodes": {"n1": "up"}}, None, []),
}


@pytest.mark.parametrize("case", sorted(RELOADS))
def test_reload_answer(case: str) -> None:
    status, doc, written, problems = RELOADS[case]
    assert reload_problems(status, doc, written) == problems


@pytest.mark.parametrize(
    ("doc", "version"),
    [
        ({"version": {"number": "8.15.0"}, "tagline": "You Know, for Search"}, "8.15.0"),
        ({"version": {"number": 8}}, None),
        ({"version": "8.15.0"}, None),
        ({}, None),
        ([], None),
        (None, None),
    ],
)
def test_root_version(doc: Any, version: str | None) -> None:
    assert root_version(doc) == version


def test_error_reason() -> None:
    assert error_reason({"error": {"reason": "r"}}) == ": r"
    assert error_reason({"error": {"type": "t"}}) == ""
    assert error_reason("text") == ""
