"""Checkpoints through orbax ``CheckpointManager``.

orbax writes each step into a temporary folder and renames it when complete, so a run
killed mid-save leaves the previous checkpoint intact and ``latest_step`` ignores the
partial one. A checkpoint that exists but cannot be read raises :class:`CheckpointError`
and nothing is deleted.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp


class CheckpointError(RuntimeError):
    """A checkpoint that is missing or unreadable; the message names the path."""


def checkpoint_dir(path: str) -> str:
    """The orbax folder of ``path``: a run's workdir (``<workdir>/checkpoints``) or itself."""
    path = os.path.abspath(os.path.expanduser(path))
    nested = os.path.join(path, "checkpoints")
    return nested if os.path.isdir(nested) else path


class Checkpointer:
    """Save and restore the whole :class:`~jaxquant.train.state.TrainState` of one run."""

    def __init__(self, directory: str, max_to_keep: int = 2):
        self.directory = os.path.abspath(directory)
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True),
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: Any) -> None:
        self.manager.save(step, args=ocp.args.StandardSave(state), force=True)
        self.manager.wait_until_finished()

    def restore(self, template: Any, step: int | None = None) -> Any:
        """Restore onto ``template`` (same structure and dtypes).

        Each leaf comes back with the sharding of its template leaf, so a run restarted on
        another mesh (more or fewer devices, another ``mesh.model``) restores onto that mesh.
        """
        step = self.latest_step() if step is None else step
        try:
            return self.manager.restore(step, args=ocp.args.StandardRestore(template))
        except Exception as error:  # noqa: BLE001 - re-raised with the path
            raise CheckpointError(
                f"checkpoint {self.directory}/{step} is corrupt or does not match this run "
                f"({type(error).__name__}: {str(error).splitlines()[0][:200]}); move it away "
                "to resume from an earlier step, or use a fresh --workdir"
            ) from error

    def close(self) -> None:
        self.manager.close()


def find_checkpoint(path: str) -> tuple[str, int]:
    """``(orbax folder, latest step)`` of the run at ``path``; :class:`CheckpointError` if
    there is no checkpoint. Cheap: nothing is read but the folder listing."""
    directory = checkpoint_dir(path)
    if not os.path.isdir(directory):
        raise CheckpointError(f"checkpoint {path!r} does not exist")
    manager = ocp.CheckpointManager(directory)
    try:
        step = manager.latest_step()
    finally:
        manager.close()
    if step is None:
        raise CheckpointError(f"no checkpoint found in {directory!r}")
    return directory, step


def load_raw(path: str) -> tuple[int, dict[str, Any]]:
    """``(step, state_dict)`` of the latest checkpoint under ``path``, as saved (no template).

    Used for ``config.init_from`` and analysis, where the saving run's optimiser state is
    of no interest. Leaves come back as host ``numpy`` arrays, whatever mesh saved them, so
    every process of a run on any device count can read it. Raises :class:`CheckpointError`
    if there is none or it is unreadable.
    """
    directory, step = find_checkpoint(path)
    manager = ocp.CheckpointManager(directory, item_handlers=ocp.StandardCheckpointHandler())
    try:
        host = jax.tree.map(lambda leaf: np.empty(leaf.shape, leaf.dtype), manager.item_metadata(step))
        return step, manager.restore(step, args=ocp.args.StandardRestore(host))
    except Exception as error:  # noqa: BLE001 - re-raised with the path
        raise CheckpointError(
            f"checkpoint {directory}/{step} is corrupt or unreadable "
            f"({type(error).__name__}: {str(error).splitlines()[0][:200]})"
        ) from error
    finally:
        manager.close()
