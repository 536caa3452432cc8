"""Every experiment config in configs/ loads and builds a valid run (nothing is trained)."""

import glob
import importlib.util
import os
import re

import ml_collections
import pytest

from jaxquant.data.sources import DEFAULT_FASHION_MNIST_DIR, DatasetNotFoundError
from jaxquant.methods import METHODS, get_method
from jaxquant.pipeline import stage_config, stage_order
from jaxquant.train.setup import build_run

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_FILES = sorted(
    path
    for path in glob.glob(os.path.join(REPO, "configs", "*.py"))
    if os.path.basename(path) not in ("__init__.py", "common.py")
)
# every variant of the parametrised configs (``--config configs/<file>.py:<argument>``)
VARIANTS = (
    [f"digits.py:{m}" for m in sorted(METHODS)]
    + [f"fashion_mnist.py:{m}" for m in ("fp", "lsq", "fpq", "cr", "mec", "dnq")]
    + [f"fashion_mnist.py:{m},cnn6" for m in ("fp", "lsq", "fpq", "cr", "mec", "kd", "sam")]
    + [f"cifar.py:{m},cifar10,resnet20" for m in sorted(METHODS)]
    + ["cifar.py:lsq,cifar100,mobilenet_v2", "cifar.py"]
    + [
        f"dnq.py:{m},{r}"
        for m in ("fp", "dnq")
        for r in ("digits", "fashion_cnn", "fashion_vit", "cifar100_deit")
    ]
    + [
        f"dnq_vs_fp.py:{r}"
        for r in ("digits", "fashion_cnn", "fashion_vit", "cifar100_deit", "imagenet_deit")
    ]
    + ["quickstart.py", "ptq_digits.py", "analyse_digits.py"]
)

FP_TRAINING = ("fp", "dnq")  # methods that train without quantizers


def load_config(spec):
    """What ``--config=<file>[:<argument>]`` does: import the file and call ``get_config``."""
    name, _, argument = spec.partition(":")
    path = os.path.join(REPO, "configs", name)
    module_spec = importlib.util.spec_from_file_location(name[:-3], path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(*([argument] if argument else []))


def test_every_config_file_has_a_variant_under_test():
    assert {os.path.basename(p) for p in CONFIG_FILES} == {v.partition(":")[0] for v in VARIANTS}


def runnable_configs(config, workdir):
    """The train configs a config stands for: itself, or each stage of a pipeline."""
    if config.mode != "pipeline":
        return [config]
    stages = [stage_config(config, name, workdir) for name in stage_order(config)]
    for stage in stages:
        stage.init_from = ""  # an earlier stage's run does not exist yet
    return stages


@pytest.mark.parametrize("spec", VARIANTS)
def test_config_loads_and_builds(spec, tmp_path, monkeypatch, request):
    monkeypatch.chdir(REPO)
    config = load_config(spec)
    assert isinstance(config, ml_collections.ConfigDict)
    for run_config in runnable_configs(config, str(tmp_path)):
        if not run_config.init_from and get_method(run_config.method.name).uses_teacher(run_config):
            run_config.init_from = request.getfixturevalue("fp_digits_run")  # any FP run: only checked
        data = run_config.data
        if data.source == "tfds":
            if not os.path.isdir(os.path.join(data.data_dir, data.name)):
                with pytest.raises(DatasetNotFoundError, match="is not prepared"):
                    build_run(run_config)
                continue
        elif data.name == "fashion_mnist" and not os.path.isdir(data.data_dir or DEFAULT_FASHION_MNIST_DIR):
            pytest.skip("dataset-fashion-mnist is not installed")
        run = build_run(run_config)
        assert run.method.name == run_config.method.name
        assert run.method.policy(run_config).quantizes == (run_config.method.name not in FP_TRAINING)


def test_a_config_argument_that_names_nothing_is_a_one_line_error():
    for spec, field in (
        ("digits.py:nope", "method.name='nope'"),
        ("fashion_mnist.py:lsq,vgg", "model 'vgg'"),
        ("dnq.py:lsq,digits", "method 'lsq'"),
        ("dnq.py:dnq,mnist", "recipe 'mnist'"),
    ):
        with pytest.raises(ValueError, match=re.escape(field)):
            load_config(spec)


@pytest.mark.parametrize("model", ["resnet20", "resnet18"])
def test_cifar_qat_configs_follow_the_group_protocol(model, monkeypatch):
    """methods.md §0: SGD momentum 0.9, batch 256, lr 0.01 cosine, wd 5e-4, 200 epochs,
    pad-crop 4 + flip, first/last layer 8 bits, min/max init on 100 images, from TFDS."""
    monkeypatch.chdir(REPO)
    config = load_config(f"cifar.py:lsq,cifar10,{model}")
    assert (config.model.name, config.method.name, config.data.source, config.data.name) == (
        model,
        "lsq",
        "tfds",
        "cifar10",
    )
    assert (config.optim.name, config.optim.momentum, config.optim.learning_rate) == ("sgd", 0.9, 0.01)
    assert (config.optim.schedule, config.optim.weight_decay) == ("cosine", 5e-4)
    assert (config.data.batch_size, config.train.num_epochs) == (256, 200)
    assert (config.data.crop_padding, config.data.flip) == (4, True)
    assert (config.quant.w_bits, config.quant.a_bits, config.quant.first_last_bits) == (4, 4, 8)
    assert (config.quant.scheme, config.quant.weight_granularity, config.quant.act_granularity) == (
        "asymmetric",
        "channel",
        "tensor",
    )
    assert (config.quant.init, config.quant.calibration_images) == ("minmax", 100)


@pytest.mark.parametrize("method", ["fp", "lsq", "lsq_plus", "pact", "dorefa", "sam"])
def test_cifar_protocol(method):
    config = load_config(f"cifar.py:{method},cifar100,mobilenet_v2")
    assert (config.data.source, config.data.name, config.model.name) == ("tfds", "cifar100", "mobilenet_v2")
    assert (config.quant.w_bits, config.quant.a_bits, config.quant.first_last_bits) == (4, 4, 8)
    assert (config.data.batch_size, config.train.num_epochs, config.optim.weight_decay) == (256, 200, 5e-4)
    assert config.optim.learning_rate == (0.1 if method == "fp" else 0.01)
    assert load_config(f"cifar.py:{method}").model.name == "resnet18"


@pytest.mark.parametrize("name", sorted(METHODS))
def test_a_method_block_holds_the_name_and_that_method_s_own_fields_only(name):
    method = get_method(name)
    block = method.default_config()
    assert set(block) == {"name", *method.defaults}
    assert block.name == name
    assert dict(method.options(block_config(block))) == dict(method.defaults)


def test_a_method_reads_its_fields_with_defaults_filled_in():
    config = ml_collections.ConfigDict({"method": {"name": "sam", "rho": 0.2}})
    assert get_method("sam").options(config).rho == 0.2
    config = ml_collections.ConfigDict({"method": {"name": "pact"}})
    assert get_method("pact").options(config).first_last_kind == "lsq"


def test_dnq_method_config_rejects_a_field_dnq_does_not_have():
    from jaxquant.methods.dnq import method_config

    assert method_config(p=0.25).p == 0.25
    with pytest.raises(ValueError, match=r"method\.rho is not a field of method 'dnq'"):
        method_config(rho=0.1)


def block_config(block):
    return ml_collections.ConfigDict({"method": block.to_dict()})
