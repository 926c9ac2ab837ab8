"""The state machine table and the state file, without processes."""

from __future__ import annotations

import json
import os

import pytest

from espm.supervisor.state import (
    IDLE,
    MAX_STATE_FILE,
    RUNNING,
    TRANSITIONS,
    Event,
    IllegalTransition,
    ProcessState,
    StateFileError,
    kept_down,
    next_state,
    parse_state,
    read_state_file,
    write_state_file,
)

S, E = ProcessState, Event


def test_every_state_is_idle_or_running_and_has_a_row() -> None:
    assert set(ProcessState) == IDLE | RUNNING
    assert not IDLE & RUNNING
    assert set(TRANSITIONS) == set(ProcessState)


@pytest.mark.parametrize(
    ("state", "event", "expected"),
    [
        (S.NOT_INITIALIZED, E.START_OK, S.STARTED),
        (S.NOT_INITIALIZED, E.START_ERROR, S.START_FAILED),
        (S.STARTED, E.STOP_SENT, S.STOPPING),
        (S.STARTED, E.STOP_ERROR, S.STOP_FAILED),
        (S.STARTED, E.KILL_SENT, S.KILLING),
        (S.STARTED, E.KILL_ERROR, S.KILL_FAILED),
        (S.STARTED, E.EXITED, S.FAILED),
        (S.STOPPING, E.EXITED, S.STOPPED),
        (S.STOPPING, E.KILL_SENT, S.KILLING),
        (S.KILLING, E.EXITED, S.KILLED),
        (S.STOPPED, E.START_OK, S.STARTED),
        (S.KILLED, E.START_OK, S.STARTED),
        (S.FAILED, E.START_ERROR, S.START_FAILED),
        (S.STOP_FAILED, E.EXITED, S.FAILED),
    ],
)
def test_transitions_of_the_original(state, event, expected) -> None:
    assert next_state(state, event) is expected


@pytest.mark.parametrize(
    ("state", "event"),
    [
        (S.KILLING, E.STOP_SENT),
        (S.STOPPED, E.EXITED),
        (S.NOT_INITIALIZED, E.STOP_SENT),
        (S.KILLING, E.START_OK),
    ],
)
def test_illegal_moves_raise_naming_both(state, event) -> None:
    with pytest.raises(IllegalTransition, match=f"from {state.value} on {event.value}"):
        next_state(state, event)


def test_only_idle_states_accept_a_start_outcome() -> None:
    # A start is a new process: the table allows it only where none runs, except after a
    # failed stop or kill, where a start acknowledges the process that still runs.
    for state in RUNNING:
        assert E.START_ERROR not in TRANSITIONS[state]
        if state in (S.STOP_FAILED, S.KILL_FAILED):
            assert next_state(state, E.START_OK) is S.STARTED
        else:
            assert E.START_OK not in TRANSITIONS[state]
    for state in IDLE:
        assert E.EXITED not in TRANSITIONS[state]


def test_state_file_round_trip_and_atomic(tmp_path) -> None:
    path = tmp_path / "state.json"
    assert read_state_file(path) is None
    write_state_file(path, S.STOPPED, "2026-01-01T00:00:00.000Z")
    assert read_state_file(path) is S.STOPPED
    assert json.loads(path.read_text()) == {"state": "stopped", "since": "2026-01-01T00:00:00.000Z"}
    write_state_file(path, S.STARTED, "2026-01-01T00:00:01.000Z")
    assert read_state_file(path) is S.STARTED
    assert os.listdir(tmp_path) == ["state.json"]


@pytest.mark.parametrize("content", [b"", b"{}", b'{"state": "sleeping"}', b"\xff\xfe", b"[1]"])
def test_unreadable_state_file(tmp_path, content) -> None:
    path = tmp_path / "state.json"
    path.write_bytes(content)
    with pytest.raises(StateFileError, match="remove it"):
        read_state_file(path)


# -- after a restart, or a crash of espm itself ---------------------------------------------


AFTER_RESTART = [
    (None, None),
    (S.NOT_INITIALIZED, None),
    (S.STARTED, None),
    (S.START_FAILED, None),
    (S.STOPPING, S.STOPPED),
    (S.STOPPED, S.STOPPED),
    (S.STOP_FAILED, None),
    (S.KILLING, S.KILLED),
    (S.KILLED, S.KILLED),
    (S.KILL_FAILED, None),
    (S.FAILED, None),
]


@pytest.mark.parametrize(("recorded", "kept"), AFTER_RESTART)
def test_what_each_recorded_state_means_to_the_next_manager(recorded, kept) -> None:
    assert kept_down(recorded) is kept
    # Whatever was recorded, the next manager can start the process (now, or on an API start):
    # a `started` restored as is would make the first start an IllegalTransition, for good.
    assert next_state(kept or S.NOT_INITIALIZED, E.START_OK) is S.STARTED


def test_the_table_above_names_every_state() -> None:
    assert {recorded for recorded, _ in AFTER_RESTART} == {None, *ProcessState}


@pytest.mark.parametrize(
    "content",
    [
        b"[" * 4000,  # nested past the parser's recursion limit: a RecursionError, not a ValueError
        b'{"state": ' * 800,
        b'{"state": "stopped"}' + b" " * MAX_STATE_FILE,  # too large, even if it parses
        b"\x00" * 100,
        b'{"state": 1}',
        b'{"state": null}',
        b'{"state": ["stopped"]}',
        b'"stopped"',
    ],
)
def test_a_state_file_that_is_not_ours(tmp_path, content) -> None:
    path = tmp_path / "state.json"
    path.write_bytes(content)
    with pytest.raises(StateFileError, match="remove it"):
        read_state_file(path)


def test_a_fifo_directory_or_device_is_refused_without_blocking(tmp_path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)  # nobody writes it: a blocking open or read would hang here
    with pytest.raises(StateFileError, match=r"expected a regular file .*, found a FIFO"):
        read_state_file(fifo)
    with pytest.raises(StateFileError, match="found a directory"):
        read_state_file(tmp_path)
    device = tmp_path / "zero"
    device.symlink_to("/dev/zero")  # endless: read whole, it would fill the memory
    with pytest.raises(StateFileError, match="found a character device"):
        read_state_file(device)


def test_a_recorded_state_with_more_fields_still_reads() -> None:
    assert parse_state(b'{"state": "killing", "since": "x", "by": "someone"}') is S.KILLING
