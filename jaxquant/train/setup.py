"""Run assembly: build an experiment once, start or resume its state, load a finished run.

* :func:`build_run` validates the config and builds, once each: data splits and batches,
  the policy, the model (and a frozen FP teacher's model), the method and its context (which
  knows the run's total steps), the optimiser and its schedule, and the mesh.
* :func:`initial_state` starts a run, in this order of precedence (as big_vision does):
  resume from the workdir's latest checkpoint onto an abstract template
  (:func:`abstract_train_state`: ``jax.eval_shape`` with the step's shardings: nothing is
  initialised, ``init_from`` is not read and no calibration is thrown away); else
  :func:`create_train_state` from ``init_from`` (read once, for the student and a teacher);
  else from scratch.
* :func:`load_run` rebuilds a finished run from its workdir alone (its ``config.json`` and
  checkpoint, never its ``init_from``): what ``analyse``, ``ptq``, the study, the benchmarks
  and the notebook use.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxquant import parallel
from jaxquant.checks import check_choice
from jaxquant.data import TrainBatches, calibration_images, hold_out_validation, load_splits
from jaxquant.data.sources import Split
from jaxquant.defaults import get_config
from jaxquant.methods import Method, MethodContext, get_method, method_param_names
from jaxquant.models import create_model, split_variables
from jaxquant.quant.calibration import calibrate
from jaxquant.quant.layers import is_quantizer_name
from jaxquant.quant.policy import FULL_PRECISION, QuantPolicy
from jaxquant.train.batchnorm import reestimate_batch_stats
from jaxquant.train.checkpoint import Checkpointer, CheckpointError, find_checkpoint, load_raw
from jaxquant.train.optim import create_optimizer
from jaxquant.train.state import TrainState

BN_REESTIMATE_CHOICES = ("auto", "always", "never")
CONFIG_FILE = "config.json"


@dataclasses.dataclass
class Run:
    """Everything built from a config before training starts."""

    config: ml_collections.ConfigDict
    method: Method
    policy: QuantPolicy
    ctx: MethodContext
    train_split: Split
    test_split: Split
    mesh: Any
    batches: TrainBatches
    tx: Any
    schedule: Any
    validation_split: Split | None = None  # data.validation_images > 0

    @property
    def eval_split(self) -> Split:
        """What evaluations during training read: validation when there is one, else test."""
        return self.validation_split or self.test_split

    @property
    def total_steps(self) -> int:
        return self.ctx.total_steps

    @property
    def reestimates_bn(self) -> bool:
        """Whether BatchNorm statistics are re-estimated at the start and end of training."""
        return bn_reestimate_enabled(self.config, self.policy.quantizes)

    def state_sharding(self, tree):
        """The sharding of each leaf of ``tree`` on this run's mesh (FSDP rule of ``config.mesh``)."""
        return parallel.state_sharding(tree, self.mesh, self.config.mesh.fsdp_min_size)

    def place_state(self, tree):
        """``tree`` as global arrays on this run's mesh, with :meth:`state_sharding`."""
        return parallel.place_state(tree, self.mesh, self.config.mesh.fsdp_min_size)


def bn_reestimate_enabled(config: ml_collections.ConfigDict, quantizes: bool) -> bool:
    """``train.bn_reestimate``: ``always``, ``never``, or ``auto`` = for methods that quantize."""
    choice = check_choice(config.train.bn_reestimate, BN_REESTIMATE_CHOICES, "train.bn_reestimate")
    return choice == "always" or (choice == "auto" and quantizes)


def check_train_fields(config: ml_collections.ConfigDict) -> None:
    """One-line errors for training fields that cannot work, before anything is built."""
    count = config.train.bn_reestimate_images
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        raise ValueError(f"train.bn_reestimate_images={count!r} must be a positive integer")
    if config.train.num_steps == 0 or (config.train.num_steps < 0 and config.train.num_epochs <= 0):
        raise ValueError(
            f"train.num_steps={config.train.num_steps!r} with train.num_epochs="
            f"{config.train.num_epochs!r} trains nothing: set a positive number of steps or epochs"
        )


def total_train_steps(config: ml_collections.ConfigDict, batches: TrainBatches) -> int:
    if config.train.num_steps > 0:
        return int(config.train.num_steps)
    return int(config.train.num_epochs * batches.steps_per_epoch)


@contextlib.contextmanager
def init_from_errors(path: str):
    """Re-raise a :class:`CheckpointError` with the config field it came from."""
    try:
        yield
    except CheckpointError as error:
        raise CheckpointError(f"init_from={path!r} cannot be loaded: {error}") from error


def run_splits(
    config: ml_collections.ConfigDict, splits: tuple[Split, Split] | None = None
) -> tuple[Split, Split | None, Split]:
    """``(train, validation, test)`` of ``config.data`` (``splits`` = (train, test) replace the
    configured data); validation is ``None`` unless ``data.validation_images`` > 0, and then
    held out of train (:func:`~jaxquant.data.hold_out_validation`)."""
    if splits is None:
        splits = load_splits(config.data.source, config.data.name, config.data.data_dir)
    train_split, test_split = splits
    count = config.data.get("validation_images", 0)
    if not count:
        return train_split, None, test_split
    train_split, validation_split = hold_out_validation(train_split, count)
    return train_split, validation_split, test_split


def build_run(
    config: ml_collections.ConfigDict, loading: bool = False, splits: tuple[Split, Split] | None = None
) -> Run:
    """Validate the config and build data, models, method, optimiser and mesh; fail fast on bad
    input. ``loading=True`` rebuilds a finished run (:func:`load_run`): its ``init_from`` is
    neither needed nor looked at. ``splits`` (train, test) replace the configured data (the
    benchmarks' random images)."""
    method = get_method(config.method.name)
    method.validate(config)
    policy = dataclasses.replace(method.policy(config), compute_dtype=config.model.compute_dtype)
    bn_reestimate_enabled(config, policy.quantizes)
    check_train_fields(config)
    if config.init_from and not loading:
        with init_from_errors(config.init_from):
            find_checkpoint(config.init_from)
    train_split, validation_split, test_split = run_splits(config, splits)
    model_kwargs = dict(config.model.get("kwargs", {}))
    model = create_model(config.model.name, train_split.num_classes, policy, **model_kwargs)
    teacher = None
    if method.uses_teacher(config):
        if not config.init_from and not loading:
            raise ValueError(
                f"method {method.name!r} needs an FP teacher: set --config.init_from to an FP run"
            )
        fp_policy = dataclasses.replace(FULL_PRECISION, compute_dtype=config.model.compute_dtype)
        teacher = create_model(config.model.name, train_split.num_classes, fp_policy, **model_kwargs)
    mesh = parallel.create_mesh(config.get("mesh"))
    parallel.check_divisible_over_mesh(config.data.batch_size, mesh, "data.batch_size")
    parallel.check_divisible_over_mesh(config.data.eval_batch_size, mesh, "data.eval_batch_size")
    batches = TrainBatches(train_split, config.data.batch_size, config.seed)
    total_steps = total_train_steps(config, batches)
    tx, schedule = create_optimizer(config.optim, total_steps)
    ctx = MethodContext(
        config=config,
        model=model,
        teacher_model=teacher,
        total_steps=total_steps,
        pad_value=train_split.pad_value,
    )
    return Run(
        config, method, policy, ctx, train_split, test_split, mesh, batches, tx, schedule, validation_split
    )


def init_variables(model, image_shape, rng) -> dict[str, Any]:
    """Fresh variables of ``model`` for inputs of ``image_shape`` (eval-mode init)."""
    dummy = jnp.zeros((2, *image_shape), jnp.float32)
    return jax.jit(lambda r: model.init(r, dummy, train=False))(rng)


def copy_matching(target, source, what: str, skip=frozenset()):
    """``target`` with every leaf that ``source`` also has replaced by ``source``'s value.

    Leaves that only the target has (quantizer steps and zero points of a model loaded from an
    FP run) are kept. A source subtree missing from the target is skipped when it belongs to
    a quantizer (another estimator's state, e.g. PACT's ``alpha`` loaded into an LSQ or PTQ
    model) or its top-level name is in ``skip`` (a method's own parameters, e.g. MEC's gate
    logits); any other source leaf missing from the target, or of another shape, is an
    error: the checkpoint belongs to a different model.
    """
    if not isinstance(source, dict):
        if np.shape(source) != np.shape(target):
            raise ValueError(
                f"{what}: shape {np.shape(source)} in the checkpoint, {np.shape(target)} in the model"
            )
        return jnp.asarray(source, dtype=jnp.asarray(target).dtype)
    if not isinstance(target, dict):
        raise ValueError(f"{what}: the checkpoint has a subtree where the model has a leaf")
    out = dict(target)
    for key, value in source.items():
        if key not in target:
            if key in skip or any(is_quantizer_name(name) for name in (*what.split("/"), key)):
                continue
            raise ValueError(
                f"{what}/{key} is in the checkpoint but not in the model: "
                "init_from must come from the same model.name"
            )
        out[key] = copy_matching(target[key], value, f"{what}/{key}")
    return out


def transfer_variables(variables: dict[str, Any], saved: dict[str, Any]) -> dict[str, Any]:
    """``variables`` with params and model state overwritten from a saved run's ``params`` and
    ``model_state`` (:func:`copy_matching`; methods' own parameters are left out)."""
    out = dict(variables)
    out["params"] = copy_matching(variables["params"], saved["params"], "params", method_param_names())
    for collection, values in saved.get("model_state", {}).items():
        if collection in variables:
            out[collection] = copy_matching(variables[collection], values, collection)
    return out


def clean_batch_stats(config, model, train_split: Split, mesh, params, model_state) -> dict[str, Any]:
    """``model_state`` with BatchNorm statistics re-estimated on ``train.bn_reestimate_images``
    clean (unaugmented) training images drawn with ``config.seed``, in chunks of
    ``data.batch_size`` split over the mesh, with every perturbation off
    (:func:`~jaxquant.train.batchnorm.reestimate_batch_stats`)."""
    images = calibration_images(train_split, config.train.bn_reestimate_images, config.seed)
    chunk = min(config.data.batch_size, len(images))
    place = lambda x: parallel.place_global_batch({"image": x}, mesh)["image"]
    return reestimate_batch_stats(model, params, model_state, images, chunk, place)


def assemble_state(run: Run, variables: dict[str, Any], teacher_variables, rng) -> TrainState:
    """The :class:`TrainState` of step 0 from the student's (and a teacher's) variables: the
    method's own parameters and state added, the optimiser state initialised."""
    params, model_state = split_variables(variables)
    params = {**params, **run.method.extra_params(run.ctx)}
    return TrainState(
        step=jnp.asarray(0, jnp.int32),
        params=params,
        model_state=model_state,
        opt_state=run.tx.init(params),
        extra=run.method.init_extra(run.ctx, variables, teacher_variables),
        rng=rng,
    )


def create_train_state(run: Run) -> TrainState:
    """A new state on the run's mesh: init, load ``init_from`` (read once) into the student
    and the teacher, calibrate quantizers (on the global calibration batch, split over the
    mesh), re-estimate BatchNorm statistics (``train.bn_reestimate``), build extra."""
    config = run.config
    rng = jax.random.PRNGKey(config.seed)
    init_rng, teacher_rng, state_rng = jax.random.split(rng, 3)
    variables = init_variables(run.ctx.model, run.train_split.image_shape, init_rng)
    teacher_variables = None
    if config.init_from:
        with init_from_errors(config.init_from):
            _, saved = load_raw(config.init_from)
        variables = transfer_variables(variables, saved)
        if run.ctx.teacher_model is not None:
            teacher_variables = init_variables(
                run.ctx.teacher_model, run.train_split.image_shape, teacher_rng
            )
            teacher_variables = transfer_variables(teacher_variables, saved)
    if run.policy.quantizes:
        images = calibration_images(run.train_split, config.quant.calibration_images, config.seed)
        images = parallel.place_global_batch({"image": images}, run.mesh)["image"]
        variables = calibrate(run.ctx.model, run.place_state(variables), images)
    if run.reestimates_bn:
        params, model_state = split_variables(variables)
        model_state = clean_batch_stats(config, run.ctx.model, run.train_split, run.mesh, params, model_state)
        variables = {"params": params, **model_state}
    return run.place_state(assemble_state(run, variables, teacher_variables, state_rng))


def abstract_train_state(run: Run):
    """The state's structure as ``jax.ShapeDtypeStruct`` leaves with the run's shardings:
    the restore template of a resumed run (``jax.eval_shape``: nothing is computed)."""
    image_shape = run.train_split.image_shape

    def scratch(rng):
        init_rng, teacher_rng, state_rng = jax.random.split(rng, 3)
        dummy = jnp.zeros((2, *image_shape), jnp.float32)
        variables = run.ctx.model.init(init_rng, dummy, train=False)
        teacher = run.ctx.teacher_model
        teacher_variables = None if teacher is None else teacher.init(teacher_rng, dummy, train=False)
        return assemble_state(run, variables, teacher_variables, state_rng)

    shapes = jax.eval_shape(scratch, jax.random.PRNGKey(run.config.seed))
    return jax.tree_util.tree_map(
        lambda leaf, sharding: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding),
        shapes,
        run.state_sharding(shapes),
    )


def initial_state(run: Run, checkpointer: Checkpointer) -> tuple[TrainState, bool]:
    """``(state, resumed)``: the workdir's latest checkpoint restored onto
    :func:`abstract_train_state`, else :func:`create_train_state`."""
    if checkpointer.latest_step() is not None:
        return checkpointer.restore(abstract_train_state(run)), True
    return create_train_state(run), False


# --- finished runs ---------------------------------------------------------------------------


def run_workdir(path: str) -> str:
    """The workdir of the run at ``path`` (the workdir itself or its ``checkpoints`` folder)."""
    path = os.path.abspath(os.path.expanduser(path))
    if os.path.basename(path) == "checkpoints" and not os.path.exists(os.path.join(path, CONFIG_FILE)):
        return os.path.dirname(path)
    return path


def merge_onto_defaults(fields: dict[str, Any], base: ml_collections.ConfigDict):
    """``fields`` (a run's saved config) over ``base`` (today's defaults with the run's method
    block), so that a run saved before a field existed loads with that field's default; JSON
    lists become tuples again."""

    def merge(node: ml_collections.ConfigDict, values: dict[str, Any]) -> None:
        for key, value in values.items():
            if isinstance(value, dict) and isinstance(node.get(key), ml_collections.ConfigDict):
                merge(node[key], value)
            else:
                node[key] = as_tuples(value) if isinstance(value, list | dict) else value

    with base.unlocked():
        merge(base, fields)
    return base


def as_tuples(value):
    """JSON turned a config's tuples into lists; models want them back as tuples."""
    if isinstance(value, list | tuple):
        return tuple(as_tuples(v) for v in value)
    if isinstance(value, dict):
        return {k: as_tuples(v) for k, v in value.items()}
    return value


def read_run_config(workdir: str) -> ml_collections.ConfigDict:
    """The config a run wrote into ``workdir``; :class:`CheckpointError` if there is none."""
    path = os.path.join(workdir, CONFIG_FILE)
    if not os.path.isdir(workdir):
        raise CheckpointError(f"checkpoint {workdir!r} does not exist")
    if not os.path.exists(path):
        raise CheckpointError(f"{workdir!r} has no {CONFIG_FILE}: give the workdir of a jaxquant run")
    with open(path) as f:
        fields = json.load(f)
    method = get_method(fields.get("method", {}).get("name", "fp"))
    base = get_config()
    base.method = method.default_config()
    return merge_onto_defaults(fields, base)


@dataclasses.dataclass
class LoadedRun:
    """A finished run rebuilt from its workdir: config, built run, latest checkpoint; ``name``
    (``config.name`` at first) labels it in reports."""

    name: str
    workdir: str
    run: Run
    step: int
    variables: dict[str, Any]
    extra: Any
    summary: dict[str, Any]

    @property
    def config(self) -> ml_collections.ConfigDict:
        return self.run.config

    @property
    def model(self):
        return self.run.ctx.model

    @property
    def quantized(self) -> bool:
        return self.run.policy.quantizes

    @property
    def params(self):
        return self.variables["params"]

    @property
    def model_state(self) -> dict[str, Any]:
        return split_variables(self.variables)[1]

    @property
    def variables_dict(self) -> dict[str, Any]:
        """``{'params', 'model_state'}`` as a checkpoint holds them (for :func:`transfer_variables`)."""
        return {"params": self.params, "model_state": self.model_state}


def load_run(path: str) -> LoadedRun:
    """Rebuild the run at ``path`` from its ``config.json`` and latest checkpoint alone (its
    ``init_from`` may be gone); a missing workdir, config or checkpoint is a
    :class:`CheckpointError`."""
    workdir = run_workdir(path)
    config = read_run_config(workdir)
    run = build_run(config, loading=True)
    step, saved = load_raw(workdir)
    template = init_variables(run.ctx.model, run.train_split.image_shape, jax.random.PRNGKey(0))
    variables = transfer_variables(template, saved)
    summary_path = os.path.join(workdir, "summary.json")
    summary = {}
    if os.path.exists(summary_path):
        with open(summary_path) as f:
            summary = json.load(f)
    return LoadedRun(config.name, workdir, run, step, variables, saved.get("extra", {}), summary)
