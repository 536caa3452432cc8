"""Bad input through the CLI: exit status 2 and one line ``jaxquant: error: ...`` naming the field.

Each case is a ``python -m jaxquant.main`` subprocess (~3–5 s of jax import each); they all
start at once from one fixture and the tests read their results.
"""

import glob
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLI_CONFIG = os.path.join(REPO, "tests", "cli_config.py")
# the fixture run's own settings, so that a resume of it builds the same train state
FP_RUN_FLAGS = [
    "--config.method.name=fp",
    "--config.train.num_steps=200",
    "--config.train.checkpoint_every=200",
]


def corrupt_checkpoint(run_dir, how):
    """Damage the latest checkpoint of ``run_dir``: truncate its array data or garble every file."""
    step_dir = max(
        glob.glob(os.path.join(run_dir, "checkpoints", "[0-9]*")), key=lambda p: int(os.path.basename(p))
    )
    for path in glob.glob(os.path.join(step_dir, "**"), recursive=True):
        if not os.path.isfile(path):
            continue
        if how == "truncate" and f"{os.sep}d{os.sep}" in path:
            with open(path, "r+b") as f:
                f.truncate(os.path.getsize(path) // 2)
        elif how == "garble":
            with open(path, "wb") as f:
                f.write(b"\x00not a checkpoint\xff" * 4)


LSQ = "--config.method.name=lsq"
# name -> (CLI flags, text the one error line must contain); {empty}, {truncated} and {garbled}
# are an empty folder and copies of the FP fixture run with a damaged checkpoint
CASES = {
    "unknown_method": (["--config.method.name=nope"], "method.name='nope' is unknown: allowed values ["),
    "unknown_model": (["--config.model.name=vgg"], "model.name='vgg' is unknown: allowed values ["),
    "w_bits_0": ([LSQ, "--config.quant.w_bits=0"], "quant.w_bits=0 is out of range: allowed integers 1..16"),
    "a_bits_17": (
        [LSQ, "--config.quant.a_bits=17"],
        "quant.a_bits=17 is out of range: allowed integers 1..16",
    ),
    "fashion_mnist_missing": (
        ["--config.data.name=fashion_mnist", "--config.data.data_dir={empty}"],
        "Fashion-MNIST not found",
    ),
    "tfds_missing": (
        [
            "--config.data.source=tfds",
            "--config.data.name=cifar10",
            "--config.data.data_dir=/nonexistent/tfds",
        ],
        "TFDS dataset 'cifar10' is not prepared (as array_record) under '/nonexistent/tfds'",
    ),
    "init_from_nothing": (
        [LSQ, "--config.init_from=/nonexistent/fp_run"],
        "init_from='/nonexistent/fp_run' cannot be loaded: checkpoint '/nonexistent/fp_run' does not exist",
    ),
    "init_from_empty_dir": ([LSQ, "--config.init_from={empty}"], "no checkpoint found in"),
    "resume_truncated_checkpoint": (
        [*FP_RUN_FLAGS, "--workdir={truncated}"],
        "checkpoint {truncated}/checkpoints/200 is corrupt",
    ),
    "mistyped_override": (
        ["--config.train.nonexistent=3"],
        "--config.train.nonexistent: 'nonexistent' is not a field of config.train; its fields are [",
    ),
    "mistyped_block": (
        ["--config.trian.num_steps=3"],
        "--config.trian.num_steps: 'trian' is not a field of config (did you mean 'train'?)",
    ),
    "missing_config_file": (
        ["--config=configs/quickstrat.py"],
        "--config=configs/quickstrat.py: no such config file (did you mean 'configs/quickstart.py'?)",
    ),
    "non_positive_learning_rate": (["--config.optim.learning_rate=0"], "optim.learning_rate=0.0 must be > 0"),
    "momentum_out_of_range": (
        ["--config.optim.momentum=1.0"],
        "optim.momentum=1.0 is out of range: allowed [0, 1)",
    ),
    "negative_weight_decay": (["--config.optim.weight_decay=-0.1"], "optim.weight_decay=-0.1 is negative"),
    "init_from_garbled_checkpoint": (
        [LSQ, "--config.init_from={garbled}"],
        "init_from='{garbled}' cannot be loaded: checkpoint {garbled}/checkpoints/200 is corrupt",
    ),
}


def run_cli(flags):
    config = [] if any(flag.startswith("--config=") for flag in flags) else [f"--config={CLI_CONFIG}"]
    command = [sys.executable, "-m", "jaxquant.main", *config, *flags]
    env = {**os.environ, "PYTHONPATH": REPO, "JAX_PLATFORMS": "cpu"}
    start = time.time()
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, cwd=REPO)
    return result, time.time() - start


@pytest.fixture(scope="module")
def results(fp_digits_run, tmp_path_factory):
    """name -> (completed process, seconds, expected text), all cases run 4 at a time."""
    tmp = str(tmp_path_factory.mktemp("cli_errors"))
    paths = {"empty": os.path.join(tmp, "empty")}
    os.makedirs(paths["empty"])
    for how, key in (("truncate", "truncated"), ("garble", "garbled")):
        paths[key] = os.path.join(tmp, key)
        shutil.copytree(fp_digits_run, paths[key])
        corrupt_checkpoint(paths[key], how)

    def run_case(name):
        flags, expected = CASES[name]
        flags = [flag.format(**paths) for flag in flags]
        if not any(flag.startswith("--workdir=") for flag in flags):
            flags.append(f"--workdir={os.path.join(tmp, 'workdir_' + name)}")
        return name, (*run_cli(flags), expected.format(**paths))

    with ThreadPoolExecutor(max_workers=4) as pool:
        return dict(pool.map(run_case, CASES))


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_exits_2_with_one_line(results, name):
    result, _, expected = results[name]
    assert result.returncode == 2, (result.stdout[-2000:], result.stderr[-3000:])
    assert "Traceback" not in result.stderr + result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("jaxquant: error: ")
    assert expected in lines[0], lines[0]


def test_missing_tfds_dataset_fails_at_once(results):
    """No download and no retry loop: it fails as fast as the other config errors."""
    _, seconds, _ = results["tfds_missing"]
    _, baseline, _ = results["unknown_method"]
    assert seconds < baseline + 30


def test_fashion_mnist_error_names_the_data_dir_field(results):
    line = results["fashion_mnist_missing"][0].stderr.strip()
    assert "--config.data.data_dir" in line and "apt-get install -y dataset-fashion-mnist" in line


def test_only_the_lead_process_prints_progress(capsys):
    from jaxquant.main import progress_output

    for lead in (True, False):
        with progress_output(lead):
            print(f"progress lead={lead}")
            print(f"error lead={lead}", file=sys.stderr)
    captured = capsys.readouterr()
    assert captured.out == "progress lead=True\n"
    assert captured.err == "error lead=True\nerror lead=False\n"
