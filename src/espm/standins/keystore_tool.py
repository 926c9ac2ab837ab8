"""Stand-in `elasticsearch-keystore`: the real tool's paths, prompts, output, exit codes and file format.

Keystores are real elasticsearch.keystore files (espm.keystore.format): the tool writes the
format of the Elasticsearch version it imitates (STANDIN_KEYSTORE_VERSION), refuses a newer one
as the real tool does, upgrades an older one on save, stores entries in the order a Java HashMap
gives them (as KeyStoreWrapper.save does), and reads the password of a password-protected
keystore from the first line of stdin.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, NoReturn, TextIO

from espm.keystore import format as ksf

KEYSTORE_FILENAME = "elasticsearch.keystore"
# A fixed name, as in the tool versions the contract describes: two writers in one folder collide.
TMP_FILENAME = KEYSTORE_FILENAME + ".tmp"
KEYSTORE_MODE = 0o660
SEED_SETTING = ksf.SEED_SETTING
# The real tool's seed alphabet (KeyStoreWrapper.SEED_CHARS).
SEED_CHARS = ksf.SEED_ALPHABET
SEED_LENGTH = ksf.SEED_LENGTH
SETTING_NAME_PATTERN = ksf.TOOL_NAME_PATTERN_TEXT
_SETTING_NAME = re.compile(SETTING_NAME_PATTERN)
DEFAULT_VERSION = "8.15.0"

EXIT_OK = 0
EXIT_NO_PASSWORD = 1
EXIT_USAGE = 64
EXIT_DATA_ERROR = 65
EXIT_CODE_ERROR = 70
EXIT_IO_ERROR = 74
EXIT_CONFIG = 78
# A misconfigured stand-in (a bad STANDIN_* value) is not something the real tool can report.
EXIT_STANDIN_MISCONFIGURED = 2

SILENT = 0
NORMAL = 1
VERBOSE = 2

JVM_WARNING = (
    "OpenJDK 64-Bit Server VM warning: Option UseConcMarkSweepGC was deprecated in version 9.0"
    " and will likely be removed in a future release."
)
STDIN_CLOSED = "unable to read from standard input; is standard input open and a tty attached?"
CORRUPTED = "Keystore has been corrupted or tampered with"
WRONG_PASSWORD = "Provided keystore password was incorrect"
PASSWORD_PROMPT = "Enter password for the elasticsearch keystore : "


class UserError(Exception):
    """The real tool's UserException: an `ERROR:` line and its exit code."""

    def __init__(self, exit_code: int, message: str | None) -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.message = message


class OptionError(Exception):
    """jopt-simple's OptionException: help, then `ERROR:` without the exit code suffix."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class JavaError(Exception):
    """An exception the real tool does not turn into an `ERROR:` line: a stack trace."""

    def __init__(self, java_class: str, message: str, *, io: bool = False) -> None:
        super().__init__(message)
        self.java_class = java_class
        self.message = message
        self.io = io


@dataclass(frozen=True, order=True)
class ToolVersion:
    """The Elasticsearch version whose tool the stand-in imitates."""

    major: int
    minor: int
    patch: int

    @classmethod
    def parse(cls, text: str) -> ToolVersion:
        match = re.fullmatch(r"(\d+)(?:\.(\d+))?(?:\.(\d+))?(?:-[A-Za-z0-9.]+)?", text.strip())
        if match is None:
            raise ValueError(f"not a version: {text!r}")
        major, minor, patch = (int(part) if part else 0 for part in match.groups())
        return cls(major, minor, patch)

    def at_least(self, major: int, minor: int = 0) -> bool:
        return (self.major, self.minor) >= (major, minor)

    @property
    def error_suffix(self) -> bool:
        return self.at_least(8, 10)

    @property
    def batch_add_file(self) -> bool:
        return self.at_least(7, 7)

    @property
    def passwords(self) -> bool:
        """Password-protected keystores (`create -p`) came with 7.7."""
        return self.at_least(7, 7)

    @property
    def keystore_format(self) -> int:
        """The format version this Elasticsearch writes (ValueError before 6.3: PKCS#12 inside)."""
        return ksf.format_for_es_version(f"{self.major}.{self.minor}.{self.patch}")


def java_string_hash(text: str) -> int:
    """Java's String.hashCode over UTF-16 code units, as an unsigned 32-bit number."""
    utf16 = text.encode("utf-16-be", "surrogatepass")
    value = 0
    for index in range(0, len(utf16), 2):
        value = (31 * value + int.from_bytes(utf16[index : index + 2], "big")) & 0xFFFFFFFF
    return value


def hashmap_order(names: Sequence[str]) -> list[str]:
    """The iteration order of a java.util.HashMap holding `names`, put in this order.

    KeyStoreWrapper keeps its entries in a HashMap and saves them in its iteration order: bucket
    by bucket (the spread hash masked by the table size, 16 doubled while over 3/4 full), and
    insertion order inside a bucket. Checked against every real keystore in tests/data/keystores.
    """
    table = 16
    while len(names) > table * 3 // 4:
        table *= 2

    def bucket(name: str) -> int:
        value = java_string_hash(name)
        return (value ^ (value >> 16)) & (table - 1)

    position = {name: index for index, name in enumerate(names)}
    return sorted(names, key=lambda name: (bucket(name), position[name]))


@dataclass
class Store:
    """A decrypted keystore as the tool holds it: entries, their format-3 types, its password."""

    entries: dict[str, bytes]
    types: dict[str, str] = field(default_factory=dict)
    password: str = ""

    def put(self, name: str, value: bytes, legacy_type: str) -> None:
        self.entries[name] = value
        self.types[name] = legacy_type

    def remove(self, name: str) -> None:
        del self.entries[name]
        self.types.pop(name, None)


def encode_store(store: Store, version: ToolVersion) -> bytes:
    """The file the tool of `version` saves: its own format, HashMap order, a fresh salt and IV."""
    target = version.keystore_format
    names = hashmap_order(list(store.entries))
    types = {name: store.types.get(name, "STRING") for name in names} if target == 3 else {}
    keystore = ksf.Keystore(
        target, bool(store.password), {name: store.entries[name] for name in names}, types
    )
    return ksf.encode(keystore, store.password)


def encode_keystore(
    settings: Mapping[str, bytes], *, version: str = DEFAULT_VERSION, password: str = ""
) -> bytes:
    """A keystore file holding `settings`, as the tool of `version` would save it (for tests)."""
    return encode_store(Store(dict(settings), password=password), ToolVersion.parse(version))


def parse_keystore(data: bytes, password: str = "") -> dict[str, bytes]:
    """Setting names and values from a keystore file's bytes; KeystoreFormatError when unreadable."""
    return dict(ksf.decode(data, password).entries)


def read_keystore(path: Path, password: str = "") -> dict[str, bytes] | None:
    """The settings in the keystore file, or None when there is no file."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    return parse_keystore(data, password)


def new_store() -> Store:
    """What `KeyStoreWrapper.create()` holds: a fresh seed."""
    return Store({SEED_SETTING: ksf.new_seed().encode("ascii")}, {SEED_SETTING: "STRING"})


def format_refusal(path: Path, error: ksf.FormatVersionError | None) -> JavaError:
    """KeyStoreWrapper.load's IllegalStateException for a format it cannot read."""
    if isinstance(error, ksf.FormatTooOldError):
        return JavaError(
            "java.lang.IllegalStateException",
            f"The Elasticsearch keystore [{path}] format is too old. "
            "You should delete and recreate it in order to upgrade.",
        )
    return JavaError(
        "java.lang.IllegalStateException",
        f"The Elasticsearch keystore [{path}] format is too new. Are you trying to downgrade? "
        "You should delete and recreate it in order to downgrade.",
    )


def save_keystore(config_dir: Path, store: Store, version: ToolVersion) -> None:
    """Write the tmp file, then move it over the keystore, as KeyStoreWrapper.save does."""
    tmp = config_dir / TMP_FILENAME
    target = config_dir / KEYSTORE_FILENAME
    # Encrypted before the tmp file exists: a failure here leaves nothing behind.
    encoded = encode_store(store, version)
    try:
        # O_EXCL, like Lucene's createOutput: a second writer (or a crash's leftover) fails loudly.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, KEYSTORE_MODE)
    except FileExistsError as error:
        raise JavaError("java.nio.file.FileAlreadyExistsException", str(tmp), io=True) from error
    except PermissionError as error:
        raise UserError(
            EXIT_CONFIG,
            f"unable to create temporary keystore at [{tmp}], write permissions required for "
            f"[{config_dir}] or run [elasticsearch-keystore upgrade]",
        ) from error
    try:
        data = memoryview(encoded)
        while data:
            data = data[os.write(fd, data) :]
        os.fsync(fd)
        tmp_owner = os.fstat(fd).st_uid
    finally:
        os.close(fd)
    try:
        target_owner: int | None = os.lstat(target).st_uid
    except FileNotFoundError:
        target_owner = None
    if target_owner is not None and target_owner != tmp_owner:
        tmp.unlink(missing_ok=True)
        raise UserError(
            EXIT_CONFIG,
            f"will not overwrite keystore at [{target}], because this incurs changing the file owner",
        )
    # Not left to the umask: the real tool always sets rw-rw----.
    os.chmod(tmp, KEYSTORE_MODE)
    os.replace(tmp, target)


class Terminal:
    """The real tool's Terminal: verbosity-gated output, prompts on stderr, lines from stdin."""

    def __init__(self, stdin: BinaryIO | None, stdout: TextIO, stderr: TextIO) -> None:
        self._stdin = stdin
        self._stdout = stdout
        self._stderr = stderr
        self.verbosity = NORMAL

    def println(self, message: str, level: int = NORMAL) -> None:
        if self.verbosity >= level:
            self._stdout.write(message + "\n")
            self._stdout.flush()

    def error_println(self, message: str, level: int = NORMAL) -> None:
        if self.verbosity >= level:
            self._stderr.write(message + "\n")
            self._stderr.flush()

    def read_line(self, prompt: str) -> str:
        self._stderr.write(prompt)
        self._stderr.flush()
        raw = self._stdin.readline() if self._stdin is not None else b""
        if not raw:
            # Since 6.3 a closed stdin is an error, never an answer: a caller cannot rely on EOF.
            raise JavaError("java.lang.IllegalStateException", STDIN_CLOSED)
        text = raw.decode("utf-8", errors="replace")
        text = text.removesuffix("\n")
        return text.removesuffix("\r")

    def prompt_yes_no(self, prompt: str) -> bool:
        while True:
            answer = self.read_line(prompt + " [y/N]")
            if not answer:
                return False
            answer = answer.lower()
            if answer in ("y", "n"):
                return answer == "y"
            self.error_println(f"Did not understand answer '{answer}'")


@dataclass(frozen=True)
class OptionSpec:
    short: str
    long: str
    description: str


HELP = OptionSpec("h", "help", "Show help")
SILENT_OPTION = OptionSpec("s", "silent", "Show minimal output")
VERBOSE_OPTION = OptionSpec("v", "verbose", "Show verbose output")
COMMON_OPTIONS = (HELP, SILENT_OPTION, VERBOSE_OPTION)
FORCE = OptionSpec(
    "f", "force", "Overwrite existing setting without prompting, creating keystore if necessary"
)


def parse_options(
    args: Sequence[str], specs: Sequence[OptionSpec], *, stop_at_first_argument: bool
) -> tuple[set[str], list[str]]:
    """jopt-simple's parsing: options anywhere (unless posixly correct), `--` ends them."""
    by_short = {spec.short: spec.long for spec in specs}
    by_long = {spec.long: spec.long for spec in specs}
    found: set[str] = set()
    rest: list[str] = []
    index = 0
    while index < len(args):
        arg = args[index]
        index += 1
        if arg == "--":
            rest.extend(args[index:])
            break
        if len(arg) < 2 or not arg.startswith("-"):
            rest.append(arg)
            if stop_at_first_argument:
                rest.extend(args[index:])
                break
            continue
        if arg.startswith("--"):
            name = arg[2:]
            if name not in by_long:
                raise OptionError(f"{name} is not a recognized option")
            found.add(by_long[name])
        elif arg[1:] in by_long:
            found.add(arg[1:])
        else:
            for letter in arg[1:]:
                if letter not in by_short:
                    raise OptionError(f"{letter} is not a recognized option")
                found.add(by_short[letter])
    if "silent" in found and "verbose" in found:
        raise OptionError("Option(s) [v/verbose] are unavailable given other options on the command line")
    return found, rest


def format_help(
    description: str, specs: Sequence[OptionSpec], non_option: str | None, preamble: str = ""
) -> str:
    rows = [(f"-{spec.short}, --{spec.long}", spec.description) for spec in specs]
    width = max(len("Option"), *(len(flags) for flags, _ in rows))
    lines = [description, ""]
    if preamble:
        lines.append(preamble)
    if non_option:
        lines += ["Non-option arguments:", non_option, ""]
    lines.append(f"{'Option'.ljust(width)}  Description")
    lines.append(f"{'------'.ljust(width)}  -----------")
    lines += [f"{flags.ljust(width)}  {text}" for flags, text in sorted(rows)]
    return "\n".join(lines) + "\n"


@dataclass
class Context:
    config_dir: Path
    terminal: Terminal
    version: ToolVersion

    @property
    def keystore_path(self) -> Path:
        return self.config_dir / KEYSTORE_FILENAME


def _read(context: Context) -> tuple[bytes, int, bool] | None:
    """KeyStoreWrapper.load: the file's bytes, format and password flag, or None when it is missing."""
    try:
        data = context.keystore_path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        fmt, has_password = ksf.peek(data)
    except ksf.FormatVersionError as error:
        raise format_refusal(context.keystore_path, error) from error
    except ksf.KeystoreFormatError as error:
        raise UserError(EXIT_DATA_ERROR, CORRUPTED) from error
    if fmt > context.version.keystore_format:
        raise format_refusal(context.keystore_path, None)
    return data, fmt, has_password


def _load(context: Context, *, must_exist: bool, force: bool) -> Store | None:
    """BaseKeyStoreCommand: the keystore to change, or None when the user declined to create it."""
    found = _read(context)
    if found is not None:
        data, _, has_password = found
        # The password of a protected keystore is read before anything else, from stdin's first line.
        password = context.terminal.read_line(PASSWORD_PROMPT) if has_password else ""
        try:
            keystore = ksf.decode(data, password)
        except ksf.WrongPasswordError as error:
            raise UserError(EXIT_DATA_ERROR, WRONG_PASSWORD) from error
        except ksf.KeystoreFormatError as error:
            raise UserError(EXIT_DATA_ERROR, CORRUPTED) from error
        return Store(dict(keystore.entries), dict(keystore.legacy_types), password)
    if must_exist:
        raise UserError(
            EXIT_DATA_ERROR,
            f"Elasticsearch keystore not found at [{context.keystore_path}]. "
            "Use 'create' command to create one.",
        )
    if not force and not context.terminal.prompt_yes_no(
        "The elasticsearch keystore does not exist. Do you want to create it?"
    ):
        context.terminal.println("Exiting without creating keystore.")
        return None
    # The real tool saves the new keystore at once; the contract asks for all-or-nothing.
    return new_store()


def _validate_name(name: str) -> None:
    """KeyStoreWrapper.validateSettingName: an IllegalArgumentException, not a UserException."""
    if _SETTING_NAME.fullmatch(name) is None:
        raise JavaError(
            "java.lang.IllegalArgumentException",
            f"Setting name [{name}] does not match the allowed setting name pattern [{SETTING_NAME_PATTERN}]",
        )


def _declined_overwrite(context: Context, name: str) -> bool:
    if context.terminal.prompt_yes_no(f"Setting {name} already exists. Overwrite?"):
        return False
    context.terminal.println("Exiting without modifying keystore.")
    return True


def cmd_create(context: Context, options: set[str], args: list[str]) -> int:
    terminal = context.terminal
    if "password" in options:
        password = terminal.read_line(
            "Enter new password for the elasticsearch keystore (empty for no password): "
        )
        if terminal.read_line("Enter same password again: ") != password:
            raise UserError(EXIT_DATA_ERROR, "Passwords are not equal, exiting.")
    else:
        password = ""
    if context.keystore_path.exists() and not terminal.prompt_yes_no(
        "An elasticsearch keystore already exists. Overwrite?"
    ):
        terminal.println("Exiting without creating keystore.")
        return EXIT_OK
    store = new_store()
    store.password = password
    save_keystore(context.config_dir, store, context.version)
    terminal.println(f"Created elasticsearch keystore in {context.keystore_path}")
    return EXIT_OK


def cmd_list(context: Context, options: set[str], args: list[str]) -> int:
    store = _load(context, must_exist=True, force=False)
    assert store is not None
    for name in sorted(store.entries):
        context.terminal.println(name)
    return EXIT_OK


def cmd_add(context: Context, options: set[str], args: list[str]) -> int:
    force = "force" in options
    store = _load(context, must_exist=False, force=force)
    if store is None:
        return EXIT_OK
    if not args:
        raise UserError(EXIT_USAGE, "the setting names can not be empty")
    for name in args:
        if name in store.entries and not force and _declined_overwrite(context, name):
            return EXIT_OK
        prompt = "" if "stdin" in options else f"Enter value for {name}: "
        value = context.terminal.read_line(prompt)
        try:
            _validate_name(name)
        except JavaError as error:
            # AddStringKeyStoreCommand turns the bad name into a UserException.
            raise UserError(EXIT_DATA_ERROR, error.message) from error
        store.put(name, value.encode("utf-8"), "STRING")
    save_keystore(context.config_dir, store, context.version)
    return EXIT_OK


def _resolve(context: Context, given: str) -> Path:
    # The wrapper runs the tool from ES_PATH_CONF, so a relative path is not the caller's.
    return context.config_dir / given


def cmd_add_file(context: Context, options: set[str], args: list[str]) -> int:
    force = "force" in options
    store = _load(context, must_exist=False, force=force)
    if store is None:
        return EXIT_OK
    if not args:
        raise UserError(EXIT_USAGE, "Missing setting name")
    if not context.version.batch_add_file:
        if len(args) == 1:
            raise UserError(EXIT_USAGE, "Missing file name")
        if len(args) > 2:
            extra = ", ".join(args[2:])
            raise UserError(EXIT_USAGE, f"Unrecognized extra arguments [{extra}] after filepath")
    if len(args) % 2 != 0:
        raise UserError(EXIT_USAGE, "settings and filenames must come in pairs")
    pairs: dict[str, Path] = {}
    for name, given in zip(args[0::2], args[1::2], strict=True):
        if name in store.entries and not force and _declined_overwrite(context, name):
            return EXIT_OK
        path = _resolve(context, given)
        if not path.exists():
            raise UserError(EXIT_IO_ERROR, f"File [{given}] does not exist")
        pairs[name] = path
    # Names are checked only once every file is known to exist, in a second pass, as the tool does.
    for name in pairs:
        _validate_name(name)
    for name, path in pairs.items():
        try:
            store.put(name, path.read_bytes(), "FILE")
        except OSError as error:
            raise JavaError("java.io.IOException", f"{path}: {error.strerror}", io=True) from error
    save_keystore(context.config_dir, store, context.version)
    return EXIT_OK


def cmd_remove(context: Context, options: set[str], args: list[str]) -> int:
    store = _load(context, must_exist=True, force=False)
    assert store is not None
    if not args:
        raise UserError(EXIT_USAGE, "Must supply at least one setting to remove")
    for name in args:
        if name not in store.entries:
            raise UserError(EXIT_CONFIG, f"Setting [{name}] does not exist in the keystore.")
        store.remove(name)
    save_keystore(context.config_dir, store, context.version)
    return EXIT_OK


def cmd_has_passwd(context: Context, options: set[str], args: list[str]) -> int:
    # The real command prints its own ERROR line (so -s hides it) and exits 1 without a message.
    found = _read(context)
    if found is None:
        context.terminal.error_println("ERROR: Elasticsearch keystore not found")
    elif not found[2]:
        context.terminal.error_println("ERROR: Keystore is not password-protected")
    else:
        context.terminal.println("Keystore is password-protected")
        return EXIT_OK
    raise UserError(EXIT_NO_PASSWORD, None)


@dataclass(frozen=True)
class Subcommand:
    name: str
    description: str
    options: tuple[OptionSpec, ...]
    non_option: str | None
    run: Callable[[Context, set[str], list[str]], int]


SUBCOMMANDS = {
    command.name: command
    for command in (
        Subcommand(
            "create",
            "Creates a new elasticsearch keystore",
            (OptionSpec("p", "password", "Prompt for password to encrypt the keystore"),),
            None,
            cmd_create,
        ),
        Subcommand("list", "List entries in the keystore", (), None, cmd_list),
        Subcommand(
            "add",
            "Add string settings to the keystore",
            (FORCE, OptionSpec("x", "stdin", "Read setting values from stdin")),
            "setting names",
            cmd_add,
        ),
        Subcommand(
            "add-file",
            "Add a file setting to the keystore",
            (FORCE,),
            "(setting path)+",
            cmd_add_file,
        ),
        Subcommand("remove", "Remove settings from the keystore", (), "setting names", cmd_remove),
        Subcommand(
            "has-passwd",
            "Succeeds if the keystore exists and is password-protected, fails with exit code 1 otherwise.",
            (),
            None,
            cmd_has_passwd,
        ),
    )
}

TOOL_DESCRIPTION = "A tool for managing settings stored in the elasticsearch keystore"


def _tool_help() -> str:
    commands = "\n".join(f"{c.name} - {c.description}" for c in SUBCOMMANDS.values())
    return format_help(TOOL_DESCRIPTION, COMMON_OPTIONS, "command", f"Commands\n--------\n{commands}\n")


def _set_verbosity(terminal: Terminal, options: set[str]) -> None:
    if "silent" in options:
        terminal.verbosity = SILENT
    elif "verbose" in options:
        terminal.verbosity = VERBOSE
    else:
        terminal.verbosity = NORMAL


def _execute(args: list[str], context: Context) -> int:
    """MultiCommand: its own options up to the command, then the sub-command's parsing."""
    terminal = context.terminal
    options, rest = parse_options(args, COMMON_OPTIONS, stop_at_first_argument=True)
    if "help" in options:
        terminal.println(_tool_help(), SILENT)
        return EXIT_OK
    _set_verbosity(terminal, options)
    if not rest:
        raise UserError(EXIT_USAGE, "Missing command")
    command = SUBCOMMANDS.get(rest[0])
    if command is None:
        raise UserError(EXIT_USAGE, f"Unknown command [{rest[0]}]")
    # `create -p` (password-protected keystores) came with 7.7.
    own = tuple(spec for spec in command.options if spec.long != "password" or context.version.passwords)
    specs = (*COMMON_OPTIONS, *own)
    options, arguments = parse_options(rest[1:], specs, stop_at_first_argument=False)
    if "help" in options:
        terminal.println(format_help(command.description, specs, command.non_option), SILENT)
        return EXIT_OK
    _set_verbosity(terminal, options)
    return command.run(context, options, arguments)


def _error_line(version: ToolVersion, message: str, exit_code: int) -> str:
    suffix = f", with exit code {exit_code}" if version.error_suffix else ""
    return f"ERROR: {message}{suffix}"


def report_java_error(terminal: Terminal, version: ToolVersion, error: JavaError) -> int:
    """8.x prints the stack trace and exits 70 (74 for I/O); older JVMs die with status 1."""
    trace = f"{error.java_class}: {error.message}\n\tat org.elasticsearch.cli (espm stand-in)"
    if version.major >= 8:
        terminal.error_println(trace, SILENT)
        return EXIT_IO_ERROR if error.io else EXIT_CODE_ERROR
    terminal.error_println(f'Exception in thread "main" {trace}', SILENT)
    return 1


def run(args: list[str], context: Context) -> int:
    """Command.main: the real tool's error handling around the command."""
    terminal = context.terminal
    try:
        return _execute(args, context)
    except OptionError as error:
        terminal.error_println(_tool_help())
        terminal.error_println(f"ERROR: {error.message}", SILENT)
        return EXIT_USAGE
    except UserError as error:
        if error.exit_code == EXIT_USAGE:
            terminal.error_println(_tool_help())
        if error.message is not None:
            terminal.error_println("")
            terminal.error_println(_error_line(context.version, error.message, error.exit_code), SILENT)
        return error.exit_code
    except JavaError as error:
        return report_java_error(terminal, context.version, error)


def resolve_config_dir(environ: Mapping[str, str]) -> Path:
    """ES_PATH_CONF, else ES_HOME/config; the wrapper cannot start when the folder is missing."""
    conf = environ.get("ES_PATH_CONF", "")
    if not conf:
        home = environ.get("ES_HOME", "")
        if not home:
            raise UserError(EXIT_CONFIG, "neither ES_PATH_CONF nor ES_HOME is set")
        conf = os.path.join(home, "config")
    config_dir = Path(os.path.abspath(conf))
    if not config_dir.is_dir():
        raise UserError(EXIT_CONFIG, f"ES_PATH_CONF [{config_dir}] is not a directory")
    return config_dir


def _log_invocation(log_path: str, args: list[str], environ: Mapping[str, str]) -> None:
    record = {"argv": args, "es_path_conf": environ.get("ES_PATH_CONF"), "cwd": os.getcwd()}
    line = (json.dumps(record) + "\n").encode("utf-8")
    # One write to an O_APPEND file: lines of concurrent runs never interleave.
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def logged_invocations(log_path: Path) -> list[dict[str, Any]]:
    """Every run recorded in the invocation log at `log_path`, in order (none yet: []): its
    `argv`, `es_path_conf` and `cwd`."""
    try:
        text = log_path.read_text()
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def logged_runs(log_path: Path) -> list[list[str]]:
    """argv of every run recorded in the invocation log at `log_path`, in order (none yet: [])."""
    return [record["argv"] for record in logged_invocations(log_path)]


def _hang() -> NoReturn:
    while True:
        time.sleep(3600)


def _write_garbage(config_dir: Path) -> None:
    # Lucene's codec magic followed by too little: what a crash during save leaves behind.
    (config_dir / TMP_FILENAME).write_bytes(b"\x3f\xd7\x6c\x17\x16elasticsearch.keys")


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    environ = os.environ
    stderr = sys.stderr
    try:
        version = ToolVersion.parse(environ.get("STANDIN_KEYSTORE_VERSION", DEFAULT_VERSION))
        version.keystore_format  # noqa: B018 - a version before 6.3 has no format the stand-in writes
        delay = float(environ.get("STANDIN_KEYSTORE_DELAY", "0") or "0")
        fail = environ.get("STANDIN_KEYSTORE_FAIL", "")
        fail_code = int(fail) if fail else None
    except ValueError as error:
        stderr.write(f"stand-in elasticsearch-keystore misconfigured: {error}\n")
        return EXIT_STANDIN_MISCONFIGURED
    log_path = environ.get("STANDIN_KEYSTORE_LOG", "")
    if log_path:
        try:
            _log_invocation(log_path, args, environ)
        except OSError as error:
            stderr.write(f"stand-in elasticsearch-keystore misconfigured: STANDIN_KEYSTORE_LOG: {error}\n")
            return EXIT_STANDIN_MISCONFIGURED
    if environ.get("STANDIN_KEYSTORE_STDERR_WARNING") == "1":
        stderr.write(JVM_WARNING + "\n")
        stderr.flush()
    if delay > 0:
        time.sleep(delay)
    if environ.get("STANDIN_KEYSTORE_HANG") == "1":
        _hang()
    stdin = sys.stdin.buffer if sys.stdin is not None else None
    terminal = Terminal(stdin, sys.stdout, stderr)
    if fail_code is not None:
        terminal.error_println("")
        terminal.error_println(_error_line(version, "simulated failure", fail_code), SILENT)
        return fail_code
    try:
        config_dir = resolve_config_dir(environ)
    except UserError as error:
        assert error.message is not None
        terminal.error_println("")
        terminal.error_println(_error_line(version, error.message, error.exit_code), SILENT)
        return error.exit_code
    if environ.get("STANDIN_KEYSTORE_GARBAGE") == "1":
        _write_garbage(config_dir)
        crash = JavaError(
            "java.lang.IllegalStateException",
            f"simulated crash while writing [{config_dir / TMP_FILENAME}]",
        )
        return report_java_error(terminal, version, crash)
    return run(args, Context(config_dir, terminal, version))


if __name__ == "__main__":
    sys.exit(main())
