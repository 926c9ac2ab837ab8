"""Writes src/espm/openapi.json, the OpenAPI 3 document of espm's API (run after changing routes)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parent.parent / "src" / "espm" / "openapi.json"


def ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def answer(description: str, schema: str, content_type: str = "application/json") -> dict[str, Any]:
    return {"description": description, "content": {content_type: {"schema": ref(schema)}}}


NAME = {"name": "name", "in": "path", "required": True, "description": "PM_PROC_NAME (default es)",
        "schema": {"type": "string", "pattern": "^[A-Za-z0-9_.-]+$"}}
NOT_ALLOWED = {"description": "wrong method; Allow names the right one", "headers": {
    "Allow": {"schema": {"type": "string"}}}, "content": {"application/json": {"schema": ref("Error")}}}


def process_action(verb: str, in_progress: str) -> dict[str, Any]:
    responses: dict[str, Any] = {
        "200": answer("nothing to do now: the status says why", "ProcessStatus"),
        "500": answer("the signal or the start failed; `error` says why", "ProcessStatusError"),
    }
    if in_progress:
        responses["202"] = answer(f"{in_progress} under way", "ProcessStatus")
    return {"post": {"summary": f"{verb} the managed process", "parameters": [NAME], "responses": responses}}


def document() -> dict[str, Any]:
    status_props = {
        "name": {"type": "string"},
        "state": {"type": "string", "enum": [
            "notInitialized", "started", "startFailed", "stopping", "stopped", "stopFailed",
            "killing", "killed", "killFailed", "failed"]},
        "since": {"type": "string", "format": "date-time"},
        "pid": {"type": ["integer", "null"]},
        "exit_code": {"type": ["integer", "null"]},
        "exit_signal": {"type": ["integer", "null"]},
        "starts": {"type": "integer", "minimum": 0},
        "config_checksum": {"type": ["string", "null"]},
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "espm", "version": "0.1.0",
                 "description": "Control API of espm, the process manager of an Elasticsearch container."},
        "paths": {
            "/health": {"get": {"summary": "is the manager working", "responses": {
                "200": answer("working", "Health"),
                "500": answer("the process is in startFailed, stopFailed or killFailed", "Health")}}},
            "/{name}/start": process_action("start", ""),
            "/{name}/stop": process_action("stop (SIGTERM to the group)", "a stop"),
            "/{name}/kill": process_action("kill (SIGKILL to the group)", "a kill"),
            "/{name}/status": {"get": {"summary": "the process status", "parameters": [NAME],
                                       "responses": {"200": answer("the status", "ProcessStatus")}}},
            "/{name}/ready": {"get": {"summary": "readiness: the process runs and Elasticsearch answers GET /",
                                      "parameters": [NAME], "responses": {
                                          "200": answer("ready", "Ready"),
                                          "503": answer("not ready; `reason` says why", "Ready")}}},
            "/keystore/status": {"get": {"summary": "the keystore updater's status", "responses": {
                "200": answer("the status", "KeystoreStatus"),
                "404": answer("the updater is off", "Error")}}},
            "/openapi.json": {"get": {"summary": "this document", "responses": {
                "200": {"description": "OpenAPI 3 document", "content": {"application/json": {}}}}}},
            "/debug/vars": {"get": {"summary": "runtime and manager variables (PM_EXP_VARS=true)",
                                    "responses": {"200": answer("the variables", "Vars"),
                                                  "404": answer("PM_EXP_VARS is off", "Error")}}},
            "/metrics": {"get": {"summary": "Prometheus metrics (PM_METRICS=true)", "responses": {
                "200": {"description": "text format 0.0.4", "content": {"text/plain": {}}},
                "404": answer("PM_METRICS is off", "Error")}}},
            "/debug/pprof/": {"get": {"summary": "index of profiles (PM_PROFILER=true)", "responses": {
                "200": {"description": "the profiles", "content": {"application/json": {}}},
                "404": answer("PM_PROFILER is off", "Error")}}},
            "/debug/pprof/profile": {"get": {
                "summary": "CPU profile of the manager (PM_PROFILER=true)",
                "parameters": [{"name": "seconds", "in": "query", "required": False,
                                "schema": {"type": "number", "exclusiveMinimum": 0, "maximum": 60}}],
                "responses": {"200": {"description": "pstats text", "content": {"text/plain": {}}},
                              "400": answer("bad seconds", "Error"),
                              "404": answer("PM_PROFILER is off", "Error"),
                              "409": answer("a profile is already being taken", "Error")}}},
            "/debug/pprof/heap": {"get": {"summary": "top allocations (PM_PROFILER=true)", "responses": {
                "200": {"description": "text", "content": {"text/plain": {}}},
                "404": answer("PM_PROFILER is off", "Error")}}},
            "/debug/pprof/tasks": {"get": {"summary": "stacks of tasks and threads (PM_PROFILER=true)",
                                           "responses": {
                                               "200": {"description": "text", "content": {"text/plain": {}}},
                                               "404": answer("PM_PROFILER is off", "Error")}}},
        },
        "components": {
            "schemas": {
                "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}},
                "Health": {"type": "object", "required": ["status"], "properties": {
                    "status": {"type": "string", "enum": ["ok", "error"]}, "reason": {"type": "string"}}},
                "Ready": {"type": "object", "required": ["ready"], "properties": {
                    "ready": {"type": "boolean"}, "reason": {"type": "string"}}},
                "ProcessStatus": {"type": "object", "required": list(status_props),
                                  "additionalProperties": False, "properties": status_props},
                "ProcessStatusError": {"type": "object", "required": [*status_props, "error"],
                                       "additionalProperties": False,
                                       "properties": {**status_props, "error": {"type": "string"}}},
                "KeystoreStatus": {"type": "object", "required": [
                    "state", "reason", "at", "settings", "invalid_settings", "updates", "reloads", "writer"],
                    "additionalProperties": False, "properties": {
                        "state": {"type": "string", "enum": ["notInitialized", "waiting", "running", "failed"]},
                        "reason": {"type": "string"},
                        "at": {"type": "string", "format": "date-time"},
                        "settings": {"type": "array", "items": {"type": "string"}},
                        "invalid_settings": {"type": "array", "items": {"type": "string"}},
                        "updates": {"type": "integer", "minimum": 0},
                        "reloads": {"type": "integer", "minimum": 0},
                        "writer": {"type": ["string", "null"], "enum": ["native", "tool", None],
                                   "description": "who wrote (or tried to write) the keystore last: "
                                                  "native (espm itself) or tool (KEYSTORE_BINARY); null "
                                                  "before the first write"}}},
                "Vars": {"type": "object", "required": ["cmdline", "uptime_seconds", "memory", "gc", "process",
                                                         "counters"]},
            },
        },
    }


if __name__ == "__main__":
    OUT.write_text(json.dumps(document(), indent=1) + "\n")
    print(f"wrote {OUT}")
