"""Command line: ``python -m jaxquant.main --config configs/X.py --workdir DIR``.

Any field can be overridden, e.g. ``--config.quant.w_bits=2 --config.method.name=lsq``.
Bad input (unknown method, bits out of range, missing data or checkpoint) ends with a
one-line error and exit status 2.
"""

from __future__ import annotations

import contextlib
import logging as pylogging
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from jaxquant.data.sources import DatasetNotFoundError
from jaxquant.train.checkpoint import CheckpointError
from jaxquant.train.loop import NonFiniteLossError

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Folder for checkpoints, metrics and reports.")
flags.mark_flags_as_required(["config", "workdir"])

USER_ERRORS = (ValueError, DatasetNotFoundError, CheckpointError, NonFiniteLossError, KeyError)


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
    app.run(main)
