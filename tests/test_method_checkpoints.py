"""Every registered method's checkpoint is usable: it loads for analysis (the loader of
``mode=analyse``), it is quantized by ``mode=ptq``, and it starts a QAT run as ``init_from`` —
method-owned parameters (MEC's learned gates), other estimators' quantizer state (PACT's
``alpha``, LSQ+'s ``offset``) and DNQ's noise statistics never break loading; every QAT
method's checkpoint exports to integers and the integer evaluator agrees with it."""

import numpy as np
import pytest
from conftest import tiny_config

from jaxquant.export import run_export
from jaxquant.methods import METHODS
from jaxquant.ptq import run_ptq
from jaxquant.train.loop import train_and_evaluate
from jaxquant.train.setup import build_run, create_train_state, load_run

# fields beyond the defaults that exercise what loading must cope with
EXTRA_FIELDS = {"mec": {"gates": "learned"}}


@pytest.fixture(scope="module")
def method_runs(fp_digits_run, tmp_path_factory):
    """A 2-step run of every registered method on digits (from the FP fixture)."""
    runs = {}
    for name in sorted(METHODS):
        workdir = str(tmp_path_factory.mktemp(f"run_{name}"))
        config = tiny_config(
            method__name=name,
            init_from=fp_digits_run,
            train__num_steps=2,
            train__log_every=2,
            train__log_loss_terms=False,
            train__bn_reestimate_images=64,
            optim__learning_rate=0.005,
        )
        config.method.update(EXTRA_FIELDS.get(name, {}))
        train_and_evaluate(config, workdir)
        runs[name] = workdir
    return runs


@pytest.mark.parametrize("method", sorted(METHODS))
def test_checkpoint_loads_for_analysis(method_runs, method):
    trained = load_run(method_runs[method])
    assert trained.run.config.method.name == method
    assert "head" in trained.variables["params"]


@pytest.mark.parametrize("method", sorted(METHODS))
def test_checkpoint_is_quantized_by_ptq(method_runs, method, tmp_path):
    config = tiny_config(method__name="fp", mode="ptq", init_from=method_runs[method], ptq__bits="8")
    config.train.bn_reestimate_images = 64
    summary = run_ptq(config, str(tmp_path))
    assert np.isfinite(summary["rows"][0]["test_accuracy"])


@pytest.mark.parametrize("method", sorted(METHODS))
def test_checkpoint_starts_a_qat_run(method_runs, method):
    config = tiny_config(method__name="lsq", init_from=method_runs[method], train__bn_reestimate_images=64)
    state = create_train_state(build_run(config))
    assert "mec_gate_logits" not in state.params
    assert state.params["conv1"]["input_quant"]["step"].shape == ()


QAT_METHODS = sorted(name for name in METHODS if name not in ("fp", "dnq"))  # fp, dnq: FP networks


@pytest.mark.parametrize("method", QAT_METHODS)
def test_checkpoint_exports_to_integers(method_runs, method, tmp_path):
    """export → load → integer evaluation: the integer arithmetic predicts as the fake-quantized
    network on ≥ 99.9 % of the digits test images, accuracy within 0.1 points."""
    config = tiny_config(mode="export", init_from=method_runs[method])
    agreement = run_export(config, str(tmp_path))["agreement"]
    assert agreement["agreement"] >= 0.999, agreement
    assert abs(agreement["integer_accuracy"] - agreement["fake_quant_accuracy"]) <= 0.001, agreement
