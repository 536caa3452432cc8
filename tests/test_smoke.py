"""The FP fixture trains and an LSQ run starts from it."""

from conftest import tiny_config

from jaxquant.train.loop import train_and_evaluate


def test_lsq_from_fp_checkpoint(fp_digits_run, tmp_path):
    config = tiny_config(method__name="lsq", init_from=fp_digits_run)
    summary = train_and_evaluate(config, str(tmp_path))
    assert summary["steps"] == 20
    assert summary["test_accuracy"] > 0.7
