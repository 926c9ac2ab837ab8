"""The exit code espm reports and exits with, from a raw wait status: every code, every signal."""

from __future__ import annotations

import signal

import pytest

from espm.supervisor.process import exit_of

CORE_DUMPED = 0x80


@pytest.mark.parametrize("code", range(256))
def test_every_exit_code_is_its_own(code: int) -> None:
    assert exit_of(code << 8) == (code, None)


@pytest.mark.parametrize("signum", sorted(signal.valid_signals() - {signal.SIGSTOP, signal.SIGCONT}))
@pytest.mark.parametrize("core", [0, CORE_DUMPED], ids=["", "core"])
def test_death_by_signal_n_is_128_plus_n(signum: int, core: int) -> None:
    assert exit_of(signum | core) == (128 + signum, signum)
