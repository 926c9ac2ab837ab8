"""Elasticsearch's answers read: the reload secure settings answer checked, the version found.
Pure: a status and a decoded JSON document in, a verdict out."""

from __future__ import annotations

from typing import Any


def error_reason(doc: Any) -> str:
    """`: <reason>` from an error document (`{"error": {"reason": ...}}`), else empty."""
    if isinstance(doc, dict):
        error = doc.get("error")
        if isinstance(error, dict) and error.get("reason"):
            return f": {error['reason']}"
        if isinstance(error, str):
            return f": {error}"
    return ""


def root_version(doc: Any) -> str | None:
    """`version.number` of a `GET /` answer, when it is there."""
    if not isinstance(doc, dict):
        return None
    version = doc.get("version")
    number = version.get("number") if isinstance(version, dict) else None
    return number if isinstance(number, str) else None


def reload_problems(status: int, doc: Any, written_digest: str | None) -> list[str]:
    """What is wrong with a reload answer; empty when every node loaded the keystore.

    A failure is an answer other than 200, a `_nodes.failed` above 0, or a node that carries a
    `reload_exception` (the real node reports a wrong password that way, inside a 200); a node
    that reports `keystore_digest` (9.3+) must have loaded the file written last.
    """
    if status != 200:
        return [f"HTTP {status}{error_reason(doc)}"]
    if not isinstance(doc, dict):
        return ["the answer is not a JSON object"]
    problems: list[str] = []
    summary = doc.get("_nodes") or {}
    failed = summary.get("failed", 0) if isinstance(summary, dict) else 0
    if failed:
        problems.append(f"{failed} node(s) failed")
        failures = summary.get("failures") or []
        for failure in failures if isinstance(failures, list) else []:
            if isinstance(failure, dict):
                problems.append(str(failure.get("reason") or failure))
    nodes = doc.get("nodes") or {}
    for node_id, node in nodes.items() if isinstance(nodes, dict) else []:
        if not isinstance(node, dict):
            continue
        label = node.get("name") or node_id
        exc = node.get("reload_exception")
        if exc:
            reason = exc.get("reason") if isinstance(exc, dict) else exc
            problems.append(f"node {label}: {reason}")
        digest = node.get("keystore_digest")
        if digest is not None and written_digest and digest != written_digest:
            problems.append(
                f"node {label} loaded a keystore with digest {digest}, not the one written ({written_digest})"
            )
    return problems
