"""Closest-match suggestions for a mistyped sub-command, flag or environment variable."""

from __future__ import annotations

import argparse
import difflib
import re
import sys
from collections.abc import Iterable
from typing import NoReturn

EXIT_USAGE = 2
_UNRECOGNIZED = re.compile(r"unrecognized arguments: (.*)")
_INVALID_CHOICE = re.compile(r"invalid choice: '([^']*)'")


def closest(word: str, candidates: Iterable[str]) -> str | None:
    """The candidate nearest to `word`, if one is near enough to be what was meant."""
    found = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return found[0] if found else None


def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    match = closest(word, candidates)
    return f" (did you mean {match}?)" if match else ""


def sub_commands(parser: argparse.ArgumentParser) -> list[str]:
    """The sub-command names a parser knows, read from its sub-parsers action."""
    names: list[str] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            names.extend(action.choices)
    return names


class SuggestingParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one short line naming the closest flag or choice."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: {self._explain(message)}\n(see {self.prog} --help)\n")

    def _explain(self, message: str) -> str:
        unrecognized = _UNRECOGNIZED.fullmatch(message)
        if unrecognized:
            flags = [s for s in self._option_string_actions if s.startswith("--")]
            words = unrecognized.group(1).split()
            # A value after an unknown flag is unrecognized too: name the flag, not its value.
            names = [w.split("=", 1)[0] for w in words if w.startswith("-")]
            if names:
                return "; ".join(f"unknown flag {n}{did_you_mean(n, flags)}" for n in names)
            hint = f" (a command goes after --: {self.prog} -- CMD ARGS)" if self.prog == "espm run" else ""
            return "unexpected argument " + " ".join(repr(w) for w in words) + hint
        invalid = _INVALID_CHOICE.search(message)
        if invalid:
            word = invalid.group(1)
            return f"unknown command {word!r}{did_you_mean(word, sub_commands(self))}"
        return message


def unknown_command(parser: argparse.ArgumentParser, word: str) -> int:
    """Say that `word` is no sub-command of `parser` and suggest the closest one."""
    hint = did_you_mean(word, sub_commands(parser)) or f" (to run a program: {parser.prog} -- {word} ...)"
    print(f"{parser.prog}: unknown command {word!r}{hint}\n(see {parser.prog} --help)", file=sys.stderr)
    return EXIT_USAGE
