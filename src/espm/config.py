"""Configuration: every PM_* and KEYSTORE_* variable, parsed once into frozen dataclasses."""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

SETTING_NAME = re.compile(r"[A-Za-z0-9_.\-]+")
PROC_NAME = re.compile(r"[A-Za-z0-9_.\-]+")
# Names that would shadow the manager's own routes.
RESERVED_PROC_NAMES = frozenset({"health", "keystore", "debug", "metrics", "openapi.json"})
UPDATER_OFF_HINT = "set PM_KEYSTORE_UPDATER=false to run without the keystore updater"
T = TypeVar("T")


class Invalid(ValueError):
    """A parser's reason to refuse a value, shown after what is expected."""


class ConfigError(Exception):
    """A variable whose value cannot be used; the message names it, its value and what is expected."""

    def __init__(self, variable: str, value: str, expected: str, *, secret: bool = False) -> None:
        shown = "<redacted>" if secret else repr(value)
        super().__init__(f"{variable}={shown}: {expected}")
        self.variable = variable


@dataclass(frozen=True)
class Variable:
    """One configuration variable: its name, default and one line of help."""

    name: str
    default: str
    help: str
    secret: bool = False

    @property
    def flag(self) -> str:
        return "--" + self.name.lower().replace("_", "-")

    @property
    def dest(self) -> str:
        return self.name.lower()


VARIABLES: tuple[Variable, ...] = (
    Variable("PM_PROC_NAME", "es", "name of the managed process; API paths are /<name>/..."),
    Variable("PM_PROC_CMD", "/usr/local/bin/docker-entrypoint.sh", "command to run (shlex-split)"),
    Variable("PM_REAPER", "true", "reap orphaned zombies (PID 1, or child subreaper)"),
    Variable("PM_HTTP_HOST", "0.0.0.0", "bind address of the HTTP(S) API"),
    Variable("PM_HTTP_PORT", "8080", "port of the HTTP(S) API (0: any free port)"),
    Variable("PM_TLS", "false", "serve HTTPS"),
    Variable("PM_CERT_PATH", "", "PEM certificate chain; required with PM_TLS=true"),
    Variable("PM_KEY_PATH", "", "PEM private key; required with PM_TLS=true"),
    Variable("PM_CLIENT_CA_PATH", "", "CA that client certificates must be signed by (mTLS)"),
    Variable("PM_STATE_FILE", "", "file where the process state is persisted"),
    Variable("PM_STOP_TIMEOUT", "", "seconds after a stop before SIGKILL; empty: never"),
    Variable("PM_EXIT_ON_STOP", "false", "exit when the process ends after an API stop or kill"),
    Variable("PM_SUCCESS_EXIT_CODES", "", "comma-separated exit statuses reported as 0"),
    Variable(
        "PM_CONFIG_FILE",
        "/usr/share/elasticsearch/config/elasticsearch.yml",
        "file whose CRC-32 is reported in the status",
    ),
    Variable("PM_KEYSTORE_UPDATER", "true", "run the keystore updater"),
    Variable("PM_EXP_VARS", "false", "serve /debug/vars"),
    Variable("PM_PROFILER", "false", "serve /debug/pprof/"),
    Variable("PM_METRICS", "false", "serve /metrics (Prometheus text format)"),
    Variable("PM_LOG_LEVEL", "info", "debug, info, warning or error"),
    Variable("PM_LOG_FORMAT", "json", "json (ECS) or text"),
    Variable("KEYSTORE_SOURCE_DIR", "/volumes/secrets", "directory of secure settings"),
    Variable(
        "KEYSTORE_BINARY",
        "/usr/share/elasticsearch/bin/elasticsearch-keystore",
        "the elasticsearch-keystore tool",
    ),
    Variable(
        "KEYSTORE_PATH",
        "/usr/share/elasticsearch/config/elasticsearch.keystore",
        "the keystore file to maintain",
    ),
    Variable("KEYSTORE_RELOAD_CREDENTIALS", "false", "reload secure settings after each update"),
    Variable("KEYSTORE_ES_USERNAME", "", "Elasticsearch user; required when reloading"),
    Variable("KEYSTORE_ES_PASSWORD", "", "its password", secret=True),
    Variable("KEYSTORE_ES_PASSWORD_FILE", "", "file holding the password"),
    Variable("KEYSTORE_ES_CA_CERTS_PATH", "/volume/http-certs", "CA file, or folder of *.crt/*.pem"),
    Variable("KEYSTORE_ES_ENDPOINT", "https://127.0.0.1:9200", "Elasticsearch endpoint"),
    Variable("KEYSTORE_ES_VERSION", "", "Elasticsearch version; empty: read from GET /"),
    Variable("KEYSTORE_TOOL_TIMEOUT", "120", "seconds one keystore tool run may take"),
    Variable(
        "KEYSTORE_WRITER",
        "auto",
        "native (no JVM), tool (KEYSTORE_BINARY), or auto: native when the file's format is known",
    ),
    Variable("KEYSTORE_PASSWORD_FILE", "", "file holding the keystore's password (also sent on reload)"),
)

# espm's own variables that the managed process never sees: secrets, and the `*_FILE` variables.
# The official images' docker-entrypoint.sh turns every `X_FILE` into `X` and exits 1 unless the
# file's mode is 400 or 600, so PM_STATE_FILE or KEYSTORE_ES_PASSWORD_FILE passed on would stop
# Elasticsearch before it starts (and would export espm's password into its environment).
PRIVATE_VARIABLES = frozenset(v.name for v in VARIABLES if v.secret or v.name.endswith("_FILE"))

# The words a boolean variable accepts (the ctl client reads PM_TLS with them too).
TRUE_WORDS = frozenset({"true", "1", "yes", "on"})
FALSE_WORDS = frozenset({"false", "0", "no", "off"})
LOG_LEVELS = ("debug", "info", "warning", "error")


@dataclass(frozen=True)
class ProcessConfig:
    """The managed process and how the supervisor treats it."""

    name: str
    command: tuple[str, ...]
    reaper: bool
    state_file: Path | None
    stop_timeout: float | None
    exit_on_stop: bool
    success_exit_codes: frozenset[int]
    config_file: Path


@dataclass(frozen=True)
class HttpConfig:
    """The control API: address, TLS and optional endpoints."""

    host: str
    port: int
    tls: bool
    cert_path: Path | None
    key_path: Path | None
    client_ca_path: Path | None
    exp_vars: bool
    profiler: bool
    metrics: bool


@dataclass(frozen=True)
class KeystoreConfig:
    """The keystore updater and the Elasticsearch it talks to."""

    enabled: bool
    source_dir: Path
    binary: Path
    path: Path
    reload_credentials: bool
    es_username: str
    es_password: str = field(repr=False)
    ca_certs_path: Path
    es_endpoint: str
    es_version: str
    tool_timeout: float
    writer: str = "auto"
    password_file: Path | None = None


@dataclass(frozen=True)
class LogConfig:
    """Log level and format."""

    level: str
    format: str


@dataclass(frozen=True)
class Config:
    """Everything the manager needs, validated."""

    process: ProcessConfig
    http: HttpConfig
    keystore: KeystoreConfig
    log: LogConfig


class _Source:
    """Values by variable name: a flag wins over the environment, which wins over the default."""

    def __init__(self, env: Mapping[str, str], flags: Mapping[str, str | None]) -> None:
        self._env = env
        self._flags = flags
        self._vars = {v.name: v for v in VARIABLES}

    def raw(self, name: str) -> str:
        flag = self._flags.get(name)
        if flag is not None:
            return flag
        value = self._env.get(name)
        return value if value is not None else self._vars[name].default

    def parse(self, name: str, parser: Callable[[str], T], expected: str) -> T:
        value = self.raw(name)
        try:
            return parser(value)
        except ValueError as err:
            # Only our own reasons are worth showing; int()'s and float()'s repeat the value.
            detail = f" ({err})" if isinstance(err, Invalid) else ""
            raise ConfigError(name, value, expected + detail, secret=self._vars[name].secret) from None

    def boolean(self, name: str) -> bool:
        return self.parse(name, _parse_bool, "expected true/false, 1/0, yes/no or on/off")

    def path(self, name: str) -> Path | None:
        value = self.raw(name).strip()
        return Path(value) if value else None

    def error(self, name: str, expected: str) -> ConfigError:
        return ConfigError(name, self.raw(name), expected, secret=self._vars[name].secret)


def _parse_bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in TRUE_WORDS:
        return True
    if lowered in FALSE_WORDS:
        return False
    raise ValueError("")


def _parse_port(value: str) -> int:
    port = int(value.strip())
    if not 0 <= port <= 65535:
        raise ValueError("")
    return port


def _parse_seconds(value: str) -> float:
    seconds = float(value.strip())
    if not 0 < seconds < 1e9 or seconds != seconds:
        raise ValueError("")
    return seconds


def _parse_exit_codes(value: str) -> frozenset[int]:
    codes: set[int] = set()
    for part in value.split(","):
        if not part.strip():
            continue
        code = int(part.strip())
        if not 0 <= code <= 255:
            raise Invalid(f"{code} is outside 0-255")
        codes.add(code)
    return frozenset(codes)


def _parse_choice(choices: tuple[str, ...]) -> Callable[[str], str]:
    def parse(value: str) -> str:
        lowered = value.strip().lower()
        if lowered not in choices:
            raise ValueError("")
        return lowered

    return parse


def _readable_file(src: _Source, name: str) -> Path:
    path = src.path(name)
    if path is None:
        raise src.error(name, "expected a path")
    try:
        with path.open("rb"):
            pass
    except OSError as err:
        raise src.error(name, f"expected a readable file ({err.strerror})") from None
    if not path.is_file():
        raise src.error(name, "expected a regular file")
    return path


def parse_command(value: str) -> tuple[str, ...]:
    """Split a command line with shell quoting rules, never through a shell."""
    try:
        words = shlex.split(value)
    except ValueError as err:
        raise Invalid(str(err)) from None
    if not words:
        raise Invalid("the command is empty")
    return tuple(words)


def _process(src: _Source, command: tuple[str, ...] | None) -> ProcessConfig:
    name = src.raw("PM_PROC_NAME")
    if not PROC_NAME.fullmatch(name) or name in RESERVED_PROC_NAMES:
        raise src.error(
            "PM_PROC_NAME",
            "expected letters, digits, '_', '.' or '-', and not one of "
            + ", ".join(sorted(RESERVED_PROC_NAMES)),
        )
    if command is None:
        command = src.parse("PM_PROC_CMD", parse_command, "expected a command line")
    state_file = src.path("PM_STATE_FILE")
    if state_file is not None and not state_file.parent.is_dir():
        raise src.error("PM_STATE_FILE", f"expected a file in an existing folder ({state_file.parent})")
    stop_timeout_raw = src.raw("PM_STOP_TIMEOUT").strip()
    stop_timeout = (
        src.parse("PM_STOP_TIMEOUT", _parse_seconds, "expected a number of seconds above 0, or empty")
        if stop_timeout_raw
        else None
    )
    return ProcessConfig(
        name=name,
        command=command,
        reaper=src.boolean("PM_REAPER"),
        state_file=state_file,
        stop_timeout=stop_timeout,
        exit_on_stop=src.boolean("PM_EXIT_ON_STOP"),
        success_exit_codes=src.parse(
            "PM_SUCCESS_EXIT_CODES", _parse_exit_codes, "expected comma-separated numbers 0-255"
        ),
        config_file=src.path("PM_CONFIG_FILE") or Path("/dev/null"),
    )


def _http(src: _Source) -> HttpConfig:
    tls = src.boolean("PM_TLS")
    cert = key = client_ca = None
    if tls:
        if src.path("PM_CERT_PATH") is None:
            raise src.error("PM_CERT_PATH", "a PEM certificate is required when PM_TLS=true")
        if src.path("PM_KEY_PATH") is None:
            raise src.error("PM_KEY_PATH", "a PEM private key is required when PM_TLS=true")
        cert = _readable_file(src, "PM_CERT_PATH")
        key = _readable_file(src, "PM_KEY_PATH")
        if src.path("PM_CLIENT_CA_PATH") is not None:
            client_ca = _readable_file(src, "PM_CLIENT_CA_PATH")
    elif src.path("PM_CLIENT_CA_PATH") is not None:
        raise src.error("PM_CLIENT_CA_PATH", "mutual TLS needs PM_TLS=true")
    host = src.raw("PM_HTTP_HOST").strip()
    if not host:
        raise src.error("PM_HTTP_HOST", "expected an address to bind, such as 0.0.0.0, :: or 127.0.0.1")
    return HttpConfig(
        host=host,
        port=src.parse("PM_HTTP_PORT", _parse_port, "expected a port number 0-65535"),
        tls=tls,
        cert_path=cert,
        key_path=key,
        client_ca_path=client_ca,
        exp_vars=src.boolean("PM_EXP_VARS"),
        profiler=src.boolean("PM_PROFILER"),
        metrics=src.boolean("PM_METRICS"),
    )


def _parse_version(value: str) -> str:
    value = value.strip()
    if value and not re.fullmatch(r"\d+\.\d+(\.\d+)?([-+][0-9A-Za-z.\-]+)?", value):
        raise ValueError("")
    return value


def _parse_endpoint(value: str) -> str:
    from urllib.parse import urlsplit

    parts = urlsplit(value.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("")
    _ = parts.port  # raises ValueError on a bad port
    return value.strip().rstrip("/")


KEYSTORE_WRITERS = ("auto", "native", "tool")


def read_password_file(path: Path) -> str:
    """A password file's text, one trailing newline dropped (as `echo` and Secrets leave one)."""
    text = path.read_bytes().decode("utf-8", "replace")
    return text[:-1] if text.endswith("\n") else text


# The oldest Elasticsearch whose keystore format (3, AES-GCM) the native writer knows.
NATIVE_OLDEST = (6, 3)


def _check_native_version(src: _Source, version: str) -> None:
    major, minor = (int(part) for part in version.split(".")[:2])
    if (major, minor) < NATIVE_OLDEST:
        raise src.error(
            "KEYSTORE_ES_VERSION",
            "the native writer cannot write its keystore (before 6.3 the format is PKCS#12: "
            "use KEYSTORE_WRITER=tool)",
        )


def _keystore(src: _Source) -> KeystoreConfig:
    enabled = src.boolean("PM_KEYSTORE_UPDATER")
    reload = src.boolean("KEYSTORE_RELOAD_CREDENTIALS")
    source_dir = src.path("KEYSTORE_SOURCE_DIR") or Path()
    binary = src.path("KEYSTORE_BINARY") or Path()
    path = src.path("KEYSTORE_PATH") or Path()
    ca = src.path("KEYSTORE_ES_CA_CERTS_PATH") or Path()
    password = src.raw("KEYSTORE_ES_PASSWORD")
    username = src.raw("KEYSTORE_ES_USERNAME")
    if not password and src.path("KEYSTORE_ES_PASSWORD_FILE") is not None:
        password_file = _readable_file(src, "KEYSTORE_ES_PASSWORD_FILE")
        password = password_file.read_bytes().decode("utf-8", "replace")
        if password.endswith("\n"):
            password = password[:-1]
    endpoint = src.parse("KEYSTORE_ES_ENDPOINT", _parse_endpoint, "expected an http(s)://host:port URL")
    version = src.parse("KEYSTORE_ES_VERSION", _parse_version, "expected a version such as 8.15.0, or empty")
    timeout = src.parse("KEYSTORE_TOOL_TIMEOUT", _parse_seconds, "expected a number of seconds above 0")
    writer = src.parse("KEYSTORE_WRITER", _parse_choice(KEYSTORE_WRITERS), "expected auto, native or tool")
    keystore_password_file = None
    if src.path("KEYSTORE_PASSWORD_FILE") is not None:
        keystore_password_file = _readable_file(src, "KEYSTORE_PASSWORD_FILE")
    if enabled and writer == "native" and version:
        _check_native_version(src, version)
    if enabled:
        if not source_dir.is_dir():
            raise src.error("KEYSTORE_SOURCE_DIR", f"expected an existing directory; {UPDATER_OFF_HINT}")
        # The native writer never runs the tool: it needs no binary.
        if writer != "native" and not (binary.is_file() and os.access(binary, os.X_OK)):
            raise src.error("KEYSTORE_BINARY", f"expected an executable file; {UPDATER_OFF_HINT}")
        if not path.parent.is_dir():
            raise src.error("KEYSTORE_PATH", f"expected a file in an existing folder; {UPDATER_OFF_HINT}")
    if enabled and reload:
        if not username:
            raise src.error(
                "KEYSTORE_ES_USERNAME", "a user is required when KEYSTORE_RELOAD_CREDENTIALS=true"
            )
        if not password:
            raise src.error(
                "KEYSTORE_ES_PASSWORD",
                "a password (or KEYSTORE_ES_PASSWORD_FILE) is required when KEYSTORE_RELOAD_CREDENTIALS=true",
            )
        if endpoint.startswith("https:") and not ca.exists():
            raise src.error("KEYSTORE_ES_CA_CERTS_PATH", "expected a PEM file or a folder of CA certificates")
    return KeystoreConfig(
        enabled=enabled,
        source_dir=source_dir,
        binary=binary,
        path=path,
        reload_credentials=reload,
        es_username=username,
        es_password=password,
        ca_certs_path=ca,
        es_endpoint=endpoint,
        es_version=version,
        tool_timeout=timeout,
        writer=writer,
        password_file=keystore_password_file,
    )


def load(
    env: Mapping[str, str],
    flags: Mapping[str, str | None] | None = None,
    command: tuple[str, ...] | None = None,
) -> Config:
    """Parse and check the whole configuration; raise ConfigError on the first bad value."""
    src = _Source(env, flags or {})
    log = LogConfig(
        level=src.parse("PM_LOG_LEVEL", _parse_choice(LOG_LEVELS), "expected " + ", ".join(LOG_LEVELS)),
        format=src.parse("PM_LOG_FORMAT", _parse_choice(("json", "text")), "expected json or text"),
    )
    return Config(process=_process(src, command), http=_http(src), keystore=_keystore(src), log=log)


def unknown_variables(env: Mapping[str, str]) -> list[tuple[str, str | None]]:
    """PM_* and KEYSTORE_* names in `env` that are no variable of ours, each with the closest one."""
    known = [v.name for v in VARIABLES]
    unknown = [
        name
        for name in sorted(env)
        if name.startswith(("PM_", "KEYSTORE_")) and name not in known and name not in _IMAGE_VARIABLES
    ]
    if not unknown:
        return []  # and argparse and difflib stay out of the manager
    from espm.suggest import closest

    return [(name, closest(name, known)) for name in unknown]


# Variables of the Elasticsearch images' docker-entrypoint.sh that share our prefixes: the
# keystore's password, which the script hands to Elasticsearch.
_IMAGE_VARIABLES = frozenset({"KEYSTORE_PASSWORD"})
