"""Command line: ``python -m jaxquant.main --config configs/X.py --workdir DIR``.

Any field can be overridden, e.g. ``--config.quant.w_bits=2 --config.method.name=lsq``.
Bad input (unknown method, bits out of range, missing data or checkpoint) ends with a
one-line error and exit status 2.
"""

from __future__ import annotations

import contextlib
import difflib
import importlib.util
import logging as pylogging
import os
import re
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from jaxquant.checks import closest
from jaxquant.data.sources import DatasetNotFoundError
from jaxquant.train.checkpoint import CheckpointError
from jaxquant.train.lock import WorkdirBusyError
from jaxquant.train.loop import NonFiniteLossError

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file[:argument].", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Folder for checkpoints, metrics and reports.")
flags.mark_flags_as_required(["config", "workdir"])

USER_ERRORS = (
    ValueError,
    DatasetNotFoundError,
    CheckpointError,
    NonFiniteLossError,
    KeyError,
    WorkdirBusyError,
)


def is_orbax_record(record: pylogging.LogRecord) -> bool:
    return f"{os.sep}orbax{os.sep}" in record.pathname


def is_closed_event_loop(unraisable) -> bool:
    return isinstance(unraisable.exc_value, RuntimeError) and "Event loop is closed" in str(
        unraisable.exc_value
    )


def quiet_library_logs() -> None:
    """Keep library chatter out of the progress output and of one-line errors.

    orbax INFO lines are dropped, and so are orbax's own ERROR lines about an unreadable
    checkpoint (the failure reaches the user as one :class:`CheckpointError` line). A failed
    read also leaves tensorstore callbacks that hit orbax's closed event loop; their
    "Event loop is closed" reports are dropped, any other unraisable error still prints.
    """
    logging.set_verbosity(logging.WARNING)
    for name in ("absl", "orbax", "jax"):
        pylogging.getLogger(name).setLevel(pylogging.WARNING)
    pylogging.getLogger("absl").addFilter(lambda record: not is_orbax_record(record))
    default_hook = sys.unraisablehook
    sys.unraisablehook = lambda unraisable: (
        None if is_closed_event_loop(unraisable) else default_hook(unraisable)
    )


@contextlib.contextmanager
def progress_output(lead: bool):
    """Progress lines on the lead process only: every process of a multi-host run executes
    the same loop, so the others' stdout goes to ``os.devnull``; errors still reach stderr."""
    if lead:
        yield
        return
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
        yield


def config_flag(argv: list[str]) -> tuple[str | None, str | None]:
    """``(path, argument)`` of ``--config=path[:argument]`` (or ``--config path``) in ``argv``."""
    for i, arg in enumerate(argv):
        value = None
        if arg.startswith("--config="):
            value = arg.split("=", 1)[1]
        elif arg == "--config" and i + 1 < len(argv):
            value = argv[i + 1]
        if value is not None:
            path, _, argument = value.partition(":")
            return path, argument or None
    return None, None


def load_config_module(path: str):
    """The config file at ``path`` as a module (for naming the fields near a typo)."""
    spec = importlib.util.spec_from_file_location("jaxquant_user_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def override_error(argv: list[str], key: str) -> str | None:
    """``--config.a.b.<key>`` of ``argv`` that names no field: the message naming it and the
    closest fields of its parent block, or ``None`` when no override ends in ``key``."""
    overrides = [a[2:].split("=", 1)[0] for a in argv if a.startswith("--config.")]
    matches = [o for o in overrides if key in o.split(".")[1:]]
    if not matches:
        return None
    path = matches[0].split(".")[1:]
    try:
        config_path, argument = config_flag(argv)
        node = load_config_module(config_path).get_config(*([argument] if argument else []))
    except Exception:  # noqa: BLE001 - the names are a courtesy; the error line stands without them
        return f"--config.{'.'.join(path)}: {key!r} is not a config field"
    for depth, part in enumerate(path):
        if part not in node:
            parent = ".".join(["config", *path[:depth]])
            fields = sorted(node)
            if path[:depth] == ["method"]:
                # the fields of the block's method, whether or not this config file lists them
                from jaxquant.methods import get_method

                fields = sorted({"name", *get_method(node.name).defaults})
            return (
                f"--config.{'.'.join(path)}: {part!r} is not a field of {parent}"
                f"{closest(part, fields)}; its fields are {fields}"
            )
        node = node[part]
    return None


def flag_error(argv: list[str], error: BaseException) -> str:
    """One line for a command line that cannot be parsed: the flag or field it names."""
    path, _ = config_flag(argv)
    if path is not None and not os.path.exists(path):
        folder = os.path.dirname(path) or "."
        files = sorted(f for f in os.listdir(folder) if f.endswith(".py")) if os.path.isdir(folder) else []
        names = difflib.get_close_matches(os.path.basename(path), files, n=3, cutoff=0.6)
        nearby = closest(path, [os.path.join(os.path.dirname(path), name) for name in names])
        return f"--config={path}: no such config file{nearby}"
    if isinstance(error, AttributeError | KeyError):
        words = re.findall(r"\w+", str(error))
        key = words[0] if words else ""
        message = override_error(argv, key)
        if message:
            return message
    return str(error).strip().splitlines()[0]


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, with every bad flag, config file or override as one
    ``jaxquant: error:`` line (exit status 2) instead of a traceback."""
    try:
        rest = flags.FLAGS(argv)
        _CONFIG.value.get("mode")  # a config that failed to load raises on first access
        return rest
    except (flags.Error, AttributeError, KeyError, OSError, ValueError, TypeError, SyntaxError) as error:
        print(f"jaxquant: error: {flag_error(argv, error)}", file=sys.stderr)
        sys.exit(2)


def main(argv) -> None:
    del argv
    quiet_library_logs()
    from jaxquant.modes import run_mode
    from jaxquant.parallel import initialize_distributed, is_lead_process

    try:
        initialize_distributed(_CONFIG.value)
        with progress_output(is_lead_process()):
            run_mode(_CONFIG.value, _WORKDIR.value)
    except USER_ERRORS as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"jaxquant: error: {message}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
