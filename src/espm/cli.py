"""Command line: `espm [run]` runs the manager; status|start|stop|kill|keystore talk to one."""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from espm import __version__
from espm.config import VARIABLES, Config, ConfigError, load, unknown_variables
from espm.supervisor.signals import StartupSignals

if TYPE_CHECKING:
    import argparse

    from espm.api.tls import CertificateWatcher
    from espm.supervisor.state import ProcessState

CLIENT_COMMANDS = ("status", "start", "stop", "restart", "kill", "keystore")
COMMANDS = ("run", "demo", "install", *CLIENT_COMMANDS)
EXIT_CONFIG = 2


def _variables_help() -> str:
    width = max(len(v.name) for v in VARIABLES)
    lines = ["environment variables (each also a flag: PM_HTTP_PORT is --pm-http-port):"]
    for v in VARIABLES:
        default = v.default if v.default else "(empty)"
        lines.append(f"  {v.name:<{width}}  {v.help}; default: {default}")
    return "\n".join(lines)


def _top_parser() -> argparse.ArgumentParser:
    import argparse

    from espm.suggest import SuggestingParser

    parser = SuggestingParser(
        prog="espm",
        description="A PID 1 process manager for Elasticsearch containers.",
        usage="espm [run] [--pm-...=VALUE ...] [-- CMD ARGS...]\n"
        "       espm {status,start,stop,restart,kill,keystore} [--url URL] [--json] ...\n"
        "       espm demo\n"
        "       espm install DIR",
        epilog=_variables_help() + "\n\ncommands:\n"
        "  run        run the manager (the default): starts CMD, or PM_PROC_CMD\n"
        "  status     show the managed process's status\n"
        "  start, stop, kill   act on the managed process\n"
        "  restart    stop, wait until the process is down, start\n"
        "  keystore [status|list|sync]   the updater's status; list or sync a keystore file\n"
        "  demo       run espm on a built-in demo (stand-in Elasticsearch and keystore tool)\n"
        "  install    copy this standalone espm into DIR (for an init container)\n"
        "\nexit status of run: the process's own (128+N for signal N), 2 on a configuration "
        "error,\n127/126 when the command cannot be started.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"espm {__version__}")
    # The sub-commands, so that a mistyped one is matched against the real list (help: the epilog).
    commands = parser.add_subparsers(dest="command", help=argparse.SUPPRESS)
    for name in COMMANDS:
        commands.add_parser(name, add_help=False)
    return parser


def _run_parser() -> argparse.ArgumentParser:
    # argparse (with its help formatter's shutil, bz2 and lzma) and difflib cost the running
    # manager about 1.3 MiB of RSS: they are imported only when the flags need them.
    import argparse

    from espm.suggest import SuggestingParser

    parser = SuggestingParser(
        prog="espm run",
        description="Run the manager.",
        epilog=_variables_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    for v in VARIABLES:
        parser.add_argument(
            v.flag, dest=v.dest, metavar="VALUE", default=None, help=f"{v.help} (env {v.name})"
        )
    parser.add_argument("--version", action="version", version=f"espm {__version__}")
    return parser


def _split_command(argv: list[str]) -> tuple[list[str], tuple[str, ...] | None]:
    if "--" in argv:
        at = argv.index("--")
        command = tuple(argv[at + 1 :])
        if not command:
            raise ConfigError("--", "", "expected a command after --")
        return argv[:at], command
    return argv, None


def configure(argv: list[str], env: dict[str, str]) -> Config:
    """The configuration from flags, then the environment, then the defaults."""
    options, command = _split_command(argv)
    flags = _plain_flags(options)
    if flags is None:
        args = _run_parser().parse_args(options)
        flags = {v.name: getattr(args, v.dest) for v in VARIABLES}
    return load(env, flags, command)


def _plain_flags(options: list[str]) -> dict[str, str | None] | None:
    """The flags when each is `--pm-x=VALUE` or `--pm-x VALUE` (VALUE not starting with -), the
    forms argparse reads the same way; None for anything else (help, version, an abbreviation,
    a mistake), which argparse reads, answers or explains."""
    names = {v.flag: v.name for v in VARIABLES}
    flags: dict[str, str | None] = {v.name: None for v in VARIABLES}
    at = 0
    while at < len(options):
        flag, equals, value = options[at].partition("=")
        name = names.get(flag)
        if name is None:
            return None
        if not equals:
            at += 1
            if at == len(options) or options[at].startswith("-"):
                return None
            value = options[at]
        flags[name] = value
        at += 1
    return flags


def _run(argv: list[str], startup: StartupSignals) -> int:
    env = dict(os.environ)
    try:
        config = configure(argv, env)
        recorded = _recorded_state(config)
        tls = _tls(config)
        listener = _listener(config)
    except ConfigError as err:
        print(f"espm: {err}", file=sys.stderr)
        return EXIT_CONFIG
    from espm import logs

    logs.setup(config.log.level, config.log.format)
    _warn_unknown_variables(env)
    from espm.manager import run

    return run(config, startup, env, recorded, listener, tls)


def _warn_unknown_variables(env: dict[str, str]) -> None:
    import logging

    for name, match in unknown_variables(env):
        hint = f"; did you mean {match}?" if match else ""
        logging.getLogger("espm").warning(
            "%s is set but espm has no such variable: it is ignored%s",
            name,
            hint,
            extra={"variable": name},
        )


def _recorded_state(config: Config) -> ProcessState | None:
    path = config.process.state_file
    if path is None:
        return None
    from espm.supervisor.state import StateFileError, read_state_file

    try:
        return read_state_file(path)
    except StateFileError as err:
        raise ConfigError("PM_STATE_FILE", str(path), str(err)) from None


def _listener(config: Config) -> socket.socket:
    from espm.api.listener import open_listener

    http = config.http
    try:
        return open_listener(http.host, http.port)
    except socket.gaierror as err:
        raise ConfigError(
            "PM_HTTP_HOST", http.host, f"expected an address to listen on ({err.strerror})"
        ) from None
    except OSError as err:
        raise ConfigError(
            "PM_HTTP_PORT", str(http.port), f"cannot listen on {http.host}:{http.port} ({err.strerror})"
        ) from None


def _tls(config: Config) -> CertificateWatcher | None:
    http = config.http
    if not http.tls:
        return None
    from espm.api.tls import CertificateWatcher, TlsError

    assert http.cert_path is not None and http.key_path is not None
    try:
        return CertificateWatcher(http.cert_path, http.key_path, http.client_ca_path)
    except TlsError as err:
        raise ConfigError(
            "PM_CERT_PATH", str(http.cert_path), f"{err} (PM_KEY_PATH={http.key_path})"
        ) from None


def main(argv: Sequence[str] | None = None) -> int:
    # First thing: block signals, so that one arriving during start-up waits for its handler.
    startup = StartupSignals()
    args = list(sys.argv[1:] if argv is None else argv)
    command = args[0] if args and args[0] in COMMANDS else None
    if command is None and args and not args[0].startswith("-"):
        startup.unblock()
        from espm.suggest import unknown_command

        return unknown_command(_top_parser(), args[0])
    if command is None and args and args[0] in ("-h", "--help", "--version"):
        startup.unblock()
        _top_parser().parse_args(args)
        return 0
    if command == "keystore" and args[1:2] == ["status"]:
        del args[1]  # `espm keystore status` is the plain `espm keystore`: the client's
    if command == "keystore" and args[1:2] and args[1] in ("list", "sync", "-h", "--help"):
        startup.unblock()
        from espm.keystore.commands import main as keystore_main

        return keystore_main(args[1:])
    if command in CLIENT_COMMANDS:
        startup.unblock()
        from espm.client import main as client_main

        return client_main(command, args[1:])
    if command == "demo":
        startup.unblock()
        if getattr(sys, "frozen", False):
            # The demo runs its stand-ins with a Python interpreter, which the standalone build is not.
            print(
                "espm demo: not available in the standalone build; run it from a venv install",
                file=sys.stderr,
            )
            return EXIT_CONFIG
        from espm.demo import main as demo_main

        return demo_main(args[1:])
    if command == "install":
        startup.unblock()
        from espm.install import main as install_main

        return install_main(args[1:])
    if command == "run":
        args = args[1:]
    try:
        return _run(args, startup)
    except SystemExit as exc:  # argparse's own errors and --help
        return exc.code if isinstance(exc.code, int) else EXIT_CONFIG
