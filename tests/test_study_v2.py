"""Study v2's runner (benchmarks/study_v2.py) against its protocol (docs/study_protocol.md):
the constants, the QAT-length and tuning rules, and the grid's structure."""

import collections
import os
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "benchmarks"))

import study_v2  # noqa: E402

from jaxquant.methods import get_method  # noqa: E402

with open(os.path.join(REPO, "docs", "study_protocol.md")) as f:
    PROTOCOL = f.read()


def test_the_runner_s_constants_are_the_protocol_s():
    seeds = ", ".join(str(s) for s in range(study_v2.SEEDS))
    assert f"**Seeds**: {seeds}" in PROTOCOL
    assert f"`data.validation_images = {study_v2.VALIDATION_IMAGES}`" in PROTOCOL
    assert (
        f"{study_v2.PILOT_EPOCHS} epochs" in PROTOCOL
        and f"smallest e ≥ {study_v2.MIN_QAT_EPOCHS}" in PROTOCOL
    )
    assert f"within {study_v2.PLATEAU_TOLERANCE * 100:.1f} points" in PROTOCOL
    assert f"batch of {study_v2.TRACE.batch_size} training images" in PROTOCOL
    assert f"same {study_v2.TRACE.num_probes}" in " ".join(PROTOCOL.split())
    for (method, field), (default, others) in study_v2.TUNED_FIELDS.items():
        values = ", ".join([f"{default} (default)", *(str(v) for v in others)])
        assert f"`{field}` ∈ {{{values}}}" in PROTOCOL, (method, field)
    for observer in study_v2.PTQ_OBSERVERS:
        assert f"`{observer}`" in PROTOCOL
    assert "draws 0, 1, 2" in PROTOCOL and study_v2.CALIBRATION_DRAWS == (0, 1, 2)
    assert study_v2.GRID.keys() == {(4, 4), (2, 4), (2, 2)}
    assert [label for label, _, _ in study_v2.GRID[(2, 2)]] == ["lsq", "fpq", "cr", "mec", "kd"]


@pytest.mark.parametrize(
    ("curve", "epochs"),
    [
        ([(1, 0.70), (2, 0.78), (3, 0.80), (4, 0.81), (5, 0.812), (6, 0.813)], 4),
        ([(1, 0.70), (2, 0.80), (3, 0.811), (4, 0.81), (5, 0.812), (6, 0.812)], 3),
        ([(1, 0.60), (2, 0.70), (3, 0.75), (4, 0.78), (5, 0.80), (6, 0.85)], 6),
    ],
)
def test_qat_length_is_the_first_epoch_on_the_plateau(curve, epochs):
    assert study_v2.qat_length(curve) == epochs


def test_a_candidate_replaces_the_default_only_by_more_than_the_tie_tolerance():
    assert study_v2.choose(1.0, {1.0: 0.80, 0.1: 0.8005, 0.01: 0.79}) == 1.0
    assert study_v2.choose(1.0, {1.0: 0.80, 0.1: 0.802, 0.01: 0.79}) == 0.1


def tuning_records(scores):
    records = {}
    for (method, field), values in scores.items():
        for value, score in values.items():
            run_id = study_v2.candidate_id(method, field, value)
            if method == "dnq":
                records[run_id + "/ptq_minmax_draw0"] = {
                    "status": "ok",
                    "kind": "ptq",
                    "ptq": {"validation_accuracy_by_bits": {"4": score}},
                }
            else:
                records[run_id] = {"status": "ok", "kind": "train", "validation_accuracy": score}
    return records


def test_choices_come_from_the_tuning_records_and_wait_for_every_candidate():
    scores = {
        ("fpq", "csd_weight"): {1.0: 0.80, 0.1: 0.83, 0.01: 0.82},
        ("cr", "ema_horizon_fraction"): {0.1: 0.80, 0.3: 0.79},
        ("mec", "beta"): {1.0: 0.80, 10.0: 0.8005},
        ("dnq", "noise_scale"): {1.0: 0.70, 0.5: 0.75},
    }
    records = tuning_records(scores)
    chosen, _ = study_v2.choices_from(records)
    assert chosen == {
        ("fpq", "csd_weight"): 0.1,
        ("cr", "ema_horizon_fraction"): 0.1,
        ("mec", "beta"): 1.0,
        ("dnq", "noise_scale"): 0.5,
    }
    del records[study_v2.candidate_id("mec", "beta", 10.0)]
    assert study_v2.choices_from(records)[0] is None


def test_the_grid_pairs_every_method_with_its_baseline_and_reuses_the_chosen_candidates():
    chosen = {("fpq", "csd_weight"): 0.1, ("cr", "ema_horizon_fraction"): 0.1, ("mec", "beta"): 1.0}
    chosen[("dnq", "noise_scale")] = 0.5
    pilot, tuning = study_v2.pilot_stage(), study_v2.tuning_stage(3)
    grid = study_v2.grid_stage(3, chosen)
    specs = study_v2.merge(pilot, tuning, grid)
    by_id = {spec.run_id: spec for spec in specs}
    # the grid has its own seed-0 runs (change 3): a chosen candidate's config runs again, in
    # the grid, from the grid's seed-0 FP checkpoint; tuning runs are not paired with it
    assert by_id[study_v2.candidate_id("fpq", "csd_weight", 0.1)].labels["group"] == "tuning"
    tuning_ids = {s.run_id for s in tuning}
    assert all(not by_id[i].paired for i in tuning_ids) and not by_id["pilot/lsq_w2a2"].paired
    assert all(s.paired for s in grid) and [s.run_id for s in grid if s.archive] == [
        f"seed{k}/fp" for k in range(study_v2.SEEDS)
    ]
    hashes = collections.defaultdict(set)
    for run_id, digest in study_v2.spec_hashes(specs).items():
        hashes[digest].add(run_id)
    dnq = study_v2.candidate_id("dnq", "noise_scale", 0.5)
    assert {frozenset(ids) for ids in hashes.values() if len(ids) > 1} == {
        frozenset({"seed0/cr_w2a2", study_v2.candidate_id("cr", "ema_horizon_fraction", 0.1)}),
        frozenset({"seed0/dnq_t4", dnq}),
        frozenset({"seed0/dnq_t4/ptq_minmax_draw0", f"{dnq}/ptq_minmax_draw0"}),
        frozenset({"seed0/fpq_w2a2", study_v2.candidate_id("fpq", "csd_weight", 0.1)}),
        frozenset({"seed0/mec_w2a2", study_v2.candidate_id("mec", "beta", 1.0)}),
    }
    qat = [s for s in specs if s.kind == "train" and s.labels["group"] == "qat"]
    cells = collections.Counter((s.labels["method"], s.labels["bits"]) for s in qat)
    assert set(cells.values()) == {study_v2.SEEDS} and len(cells) == 13
    for spec in qat:  # same budget for every method, from its seed's FP run
        assert spec.config.train.num_epochs == 3 and spec.config.optim.learning_rate == 0.01
        assert spec.parent == f"seed{spec.labels['seed']}/fp"
        assert spec.config.data.validation_images == study_v2.VALIDATION_IMAGES
        if spec.config.method.name == "fpq":
            assert spec.config.method.csd_weight == (0.0 if spec.labels["method"] == "fpq_sfp_only" else 0.1)
    ptq = [s for s in specs if s.kind == "ptq" and s.labels["group"] == "ptq"]
    assert len(ptq) == study_v2.SEEDS * 3 * 2 * 3
    dnq = [
        s for s in specs if s.kind == "train" and s.config.method.name == "dnq" and s.labels["group"] == "fp"
    ]
    assert sorted(s.config.method.target_bits for s in dnq) == [3] * 5 + [4] * 5
    assert {s.config.method.noise_scale for s in dnq} == {0.5}


def test_the_flatness_record_has_per_layer_traces_beside_kernel_norms(fp_digits_run):
    from flax import traverse_util

    from jaxquant.study.runs import FinishedRun, TraceSettings, checkpoint_flatness
    from jaxquant.train.setup import load_run

    loaded = load_run(fp_digits_run)
    settings = TraceSettings(batch_size=32, num_probes=4, seed=0, eigen_iterations=8)
    record = checkpoint_flatness(FinishedRun(loaded.config, fp_digits_run), settings)
    assert record["status"] == "ok" and record["num_probes"] == 4 and record["batch_size"] == 32
    assert sum(layer["trace"] for layer in record["layers"].values()) == pytest.approx(
        record["value"], rel=1e-4
    )
    kernels = {
        path.rsplit("/", 1)[0]: leaf
        for path, leaf in traverse_util.flatten_dict(loaded.params, sep="/").items()
        if path.endswith("kernel")
    }
    with_norms = {name: layer for name, layer in record["layers"].items() if "kernel_norm_sq" in layer}
    assert len(with_norms) == len(kernels) >= 3
    for name, layer in with_norms.items():
        kernel = np.asarray(kernels[name], np.float64)
        assert layer["kernel_norm_sq"] == pytest.approx(float(np.sum(kernel**2)), rel=1e-9)
        assert layer["trace_times_norm_sq"] == pytest.approx(layer["trace"] * layer["kernel_norm_sq"])
    assert record["top_eigenvalue"] > 0 and record["lanczos_iterations"] == 8


def test_landscape_slices_both_checkpoints_and_the_line_between_them(fp_digits_run, tmp_path):
    import jax
    from conftest import tiny_config

    from jaxquant.curvature import model_loss
    from jaxquant.data.pipeline import calibration_images
    from jaxquant.study.runs import FinishedRun, probe_inputs
    from jaxquant.train.batchnorm import reestimate_batch_stats
    from jaxquant.train.loop import train_and_evaluate
    from jaxquant.train.setup import load_run

    records = {}
    for method in ("lsq", "fpq"):
        config = tiny_config(method__name=method, init_from=fp_digits_run, train__num_steps=4)
        config.method.update(get_method(method).default_config().to_dict())
        config.quant.w_bits = config.quant.a_bits = 2
        train_and_evaluate(config, str(tmp_path / method))
        records[method] = {
            "status": "ok", "group": "qat", "bits": "W2A2", "seed": 0, "method": method,
            "workdir": method, "config_hash": method,
        }  # fmt: skip
    out = study_v2.landscapes(str(tmp_path), records)
    assert len(out) == 1 and out[0]["seed"] == 0
    item = out[0]
    assert len(item["slices"]["lsq"]) == len(item["slices"]["fpq"]) == study_v2.SLICE_POINTS
    alphas = item["line"]["alphas"]
    assert 0.0 in alphas and 1.0 in alphas and min(alphas) == -study_v2.LINE_MARGIN
    assert np.all(np.isfinite(item["line"]["losses"]))
    # α = 0 of a slice is the checkpoint itself: the same loss as the line's end at α = 1 for FPQ
    fpq_centre = item["slices"]["fpq"][study_v2.SLICE_POINTS // 2]
    assert item["line"]["losses"][alphas.index(1.0)] == pytest.approx(fpq_centre, rel=1e-4)
    again = study_v2.landscapes(str(tmp_path), records)  # read back from its cache
    assert again == out
    # a fresh checkout: no workdir and no cache, the results file's landscape is taken as it is
    assert study_v2.landscapes(str(tmp_path / "fresh"), records, out) == out

    # the line with each point's BatchNorm statistics re-estimated: at α = 1/2, by hand
    bn_line = item["line_bn_reestimated"]
    assert bn_line["alphas"] == alphas and np.all(np.isfinite(bn_line["losses"])) and bn_line["images"] > 0
    lsq, fpq = (load_run(str(tmp_path / method)) for method in ("lsq", "fpq"))
    middle = jax.tree_util.tree_map(lambda a, b: (a + b) / 2, lsq.variables, fpq.variables)
    images = calibration_images(fpq.run.train_split, bn_line["images"], 0)
    state = reestimate_batch_stats(
        fpq.model, middle["params"], {k: v for k, v in middle.items() if k != "params"}, images
    )
    batches = probe_inputs(FinishedRun(fpq.config, str(tmp_path / "fpq")), study_v2.TRACE)[1]
    by_hand = float(model_loss(fpq.model)({"params": middle["params"], **state}, batches))
    assert bn_line["losses"][alphas.index(0.5)] == pytest.approx(by_hand, rel=1e-4)
    # an earlier landscape without that line gets it while the workdirs are here, not after
    old = {key: value for key, value in item.items() if key != "line_bn_reestimated"}
    assert study_v2.landscapes(str(tmp_path / "fresh"), records, [old]) == [old]
    os.remove(tmp_path / "landscape_seed0.json")
    assert study_v2.landscapes(str(tmp_path), records, [old]) == out


def test_a_gone_pilot_workdir_takes_its_curve_from_the_results_file(tmp_path):
    earlier = {"pilot": {"validation_by_epoch": [[1, 0.8], [2, 0.85], [3, 0.86]], "qat_epochs": 3}}
    curve = study_v2.pilot_curve(str(tmp_path), {"workdir": "pilot/lsq_w2a2-0123456789"}, earlier)
    assert curve == [(1, 0.8), (2, 0.85), (3, 0.86)] and study_v2.qat_length(curve) == 3


def test_landscape_checkpoints_are_kept_until_their_landscape_is_recorded():
    chosen = {("fpq", "csd_weight"): 1.0, ("cr", "ema_horizon_fraction"): 0.3}
    chosen.update({("mec", "beta"): 10.0, ("dnq", "noise_scale"): 1.0})
    specs = study_v2.merge(study_v2.pilot_stage(), study_v2.tuning_stage(5), study_v2.grid_stage(5, chosen))
    hashes = study_v2.spec_hashes(specs)
    needed = study_v2.landscape_checkpoints(specs, [])
    assert len(needed) == 2 * study_v2.SEEDS and "seed0/fpq_w2a2" in needed
    recorded = [{"runs": [hashes["seed0/lsq_w2a2"], hashes["seed0/fpq_w2a2"]]}]
    assert study_v2.landscape_checkpoints(specs, recorded) == needed - {
        "seed0/lsq_w2a2",
        "seed0/fpq_w2a2",
    }


def test_measure_cost_projects_the_grid_and_what_remains(tmp_path):
    import json

    steps = study_v2.STEPS_PER_EPOCH

    def train(run_id, group, method, epochs, seconds):
        return dict(run_id=run_id, kind="train", group=group, method=method, status="ok",
                    steps=epochs * steps, wall_time_s=seconds)  # fmt: skip

    runs = [
        train("seed0/fp", "fp", "fp", 10, 1000.0),  # 100 s per epoch
        train("pilot/lsq_w2a2", "pilot", "lsq", 6, 1200.0),  # 200 s per epoch
        train("seed0/lsq_w2a2", "qat", "lsq", 5, 1000.0),
        dict(run_id="seed0/fp/ptq_minmax_draw0", kind="ptq", group="ptq", status="ok", wall_time_s=60.0),
    ]
    path = tmp_path / "study_v2.json"
    path.write_text(json.dumps({"runs": runs, "pilot": {"qat_epochs": 5}, "tuning": {"chosen": {}}}))
    cost = study_v2.measure_cost(str(path))
    assert cost["measured_s_per_epoch"]["fp"] == 100.0 and cost["measured_s_per_epoch"]["lsq"] == 200.0
    assert cost["per_seed_s"]["fp"] == 1000.0 and cost["per_seed_s"]["ptq"] == 18 * 60.0
    assert cost["grid_runs_done"] == {"fp": 1, "dnq": 0, "qat": 1, "ptq": 1}
    grid_h = study_v2.SEEDS * sum(cost["per_seed_s"].values()) / 3600
    assert cost["remaining_h"] == pytest.approx(grid_h - (1000.0 + 5 * 200.0 + 60.0) / 3600)


def test_a_failed_landscape_is_left_out_and_does_not_end_the_study(monkeypatch, capsys):
    def broken(*args):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(study_v2, "landscape", broken)
    records = {
        method: {"status": "ok", "group": "qat", "bits": "W2A2", "seed": 0, "method": method}
        for method in ("lsq", "fpq")
    }
    assert study_v2.landscapes("unused", records) == []
    assert "RuntimeError: out of memory" in capsys.readouterr().err


def test_the_compilation_cache_serves_a_second_process_the_same_executable(tmp_path):
    import subprocess

    program = (
        "import sys; sys.path.insert(0, 'benchmarks'); import study_v2, jax, jax.numpy as jnp, numpy as np\n"
        f"print(study_v2.enable_compilation_cache({str(tmp_path)!r}, min_compile_time_s=0))\n"
        "f = jax.jit(lambda x: jnp.tanh(jnp.cumsum(jnp.sin(x) @ x.T, axis=0)).sum(axis=1))\n"
        "print(np.asarray(f(jnp.linspace(0, 1, 4096).reshape(64, 64))).tobytes().hex())\n"
    )

    def run():
        lines = subprocess.run(
            [sys.executable, "-c", program], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.splitlines()
        return lines[-2], lines[-1]

    folder, first = run()
    assert os.path.dirname(folder) == str(tmp_path) and os.listdir(folder)  # one folder per CPU, filled
    entries = sorted(os.listdir(folder))
    again_folder, again = run()
    assert (again_folder, again) == (folder, first) and sorted(os.listdir(folder)) == entries  # a hit


def test_weight_clipping_counts_the_latent_weights_outside_each_grid():
    """Against the definition computed here from the kernel, its per-channel step and zero
    point (the policy's unsigned asymmetric weight grid): a kernel grown 4× with its step kept
    clips far more than its neighbour."""
    import jax
    from flax import traverse_util

    from jaxquant.models import create_model
    from jaxquant.quant.calibration import calibrate
    from jaxquant.quant.policy import QuantPolicy
    from jaxquant.study.adapters import weight_clipping

    model = create_model("cnn6", 10, QuantPolicy(w_bits=2, a_bits=4))
    images = jax.random.normal(jax.random.PRNGKey(0), (8, 28, 28, 1))
    variables = calibrate(model, model.init(jax.random.PRNGKey(1), images), images)
    params = traverse_util.flatten_dict(variables["params"], sep="/")
    params["conv1/kernel"] = params["conv1/kernel"] * 4.0
    variables = {**variables, "params": traverse_util.unflatten_dict(params, sep="/")}
    state = traverse_util.flatten_dict(variables["quant_state"], sep="/")
    record = weight_clipping(model, variables, images)
    assert record["status"] == "ok"
    assert {layer: entry["bits"] for layer, entry in record["layers"].items()} == {
        "conv0": 8,
        **{f"conv{i}": 2 for i in range(1, 6)},
        "head": 8,
    }
    for layer, entry in record["layers"].items():
        kernel = np.asarray(params[f"{layer}/kernel"], np.float64)
        step = np.abs(np.asarray(params[f"{layer}/weight_quant/step"], np.float64))
        zero = np.asarray(state.get(f"{layer}/weight_quant/zero_point", 0.0))
        scaled, q_max = kernel / step + zero, 2 ** entry["bits"] - 1  # unsigned grid, zero point
        expected = np.mean((scaled < 0) | (scaled > q_max))
        assert entry["clipped"] == pytest.approx(expected, abs=1e-6), layer
        quantized = (np.clip(np.round(scaled), 0, q_max) - zero) * step
        assert entry["quantized_norm_sq"] == pytest.approx(float(np.sum(quantized**2)), rel=1e-5), layer
    assert record["layers"]["conv1"]["clipped"] > 0.3 > record["layers"]["conv2"]["clipped"]
