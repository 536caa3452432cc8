"""A study on a fresh checkout (:class:`jaxquant.study.runs.Study`): runs whose workdirs are
gone are taken from the results file, trained again only where a later run needs them, and a
paired run is valid only with the parent checkpoint it started from."""

import json
import os
import shutil

from conftest import tiny_config

from jaxquant.study.runs import RunSpec, Study, TraceSettings

TRACE = TraceSettings(batch_size=16, num_probes=2)


def specs(children: tuple[str, ...], archive: bool = False) -> list[RunSpec]:
    fp = tiny_config(method__name="fp", train__num_steps=10, train__checkpoint_every=10)
    out = [RunSpec("fp", "train", fp, {"method": "fp"}, archive=archive)]
    for name in children:
        qat = tiny_config(method__name="lsq", train__num_steps=4, train__checkpoint_every=4)
        qat.quant.w_bits = qat.quant.a_bits = 2 if name == "w2" else 4
        labels = {"method": "lsq"}
        out.append(RunSpec(name, "train", qat, labels, parent="fp", flatness=True, weight_clipping=True))
    return out


def run(tmp_path, children, keep=(), archive=False, lines=None, header=None):
    trained = []

    def log(line):
        if lines is not None:
            lines.append(line)
        if ": running in " in line:
            trained.append(line.split(":")[0].removeprefix("[study] "))

    archive_dir = str(tmp_path / "archive") if archive else None
    study = Study(str(tmp_path / "runs"), specs(children, archive), str(tmp_path / "results.json"),
                  header or {}, TRACE, log=log, keep_checkpoints=keep, archive_dir=archive_dir)  # fmt: skip
    return {record["run_id"]: record for record in study.run()}, trained


def results(tmp_path):
    return json.loads((tmp_path / "results.json").read_text())


def test_runs_come_from_the_results_file_unless_a_later_run_needs_their_checkpoint(tmp_path):
    here, there = {"cpu_model": "A", "cpus": 2}, {"cpu_model": "B", "cpus": 2}
    first, trained = run(tmp_path, ("w4",), header={"machine": here})
    assert trained == ["fp", "w4"] and first["w4"]["flatness"]["status"] == "ok"
    clipping = first["w4"].pop("weight_clipping")
    kernels = {name for name, layer in first["w4"]["flatness"]["layers"].items() if "kernel_norm_sq" in layer}
    assert clipping["status"] == "ok" and set(clipping["layers"]) == kernels
    assert first["fp"]["machine"] == first["w4"]["machine"] == here  # a record names its machine
    digest = first["fp"]["checkpoint_digest"]
    assert first["w4"]["parent_digest"] == digest != first["w4"]["checkpoint_digest"]

    # A fresh checkout: no workdir, the results file is there. Nothing trains, also for a
    # record written before the weight clipping was measured (it is not a required analysis).
    shutil.rmtree(tmp_path / "runs")
    file = results(tmp_path)
    for record in file["runs"]:
        record.pop("weight_clipping", None)
    (tmp_path / "results.json").write_text(json.dumps(file))
    lines = []
    again, trained = run(tmp_path, ("w4",), lines=lines)
    status_lines = [line for line in lines if line.endswith(" of 2]")]
    assert [line.rsplit(" [", 1)[1] for line in status_lines] == ["1 of 2]", "2 of 2]"]  # progress
    assert trained == [] and not (tmp_path / "runs").exists()
    assert again == first

    # A new run starts from FP: FP trains again (to the same weights), W4 does not.
    grown, trained = run(tmp_path, ("w4", "w2"), header={"machine": there})  # on another machine
    assert trained == ["fp", "w2"]
    assert grown["fp"]["reproduces_earlier_record"] is True
    assert grown["fp"]["checkpoint_digest"] == first["fp"]["checkpoint_digest"] and grown["w4"] == first["w4"]
    assert (grown["fp"]["machine"], grown["w2"]["machine"]) == (there, there)
    assert results(tmp_path)["machine"] == there

    # A call over fewer specs (an earlier stage) keeps the other runs' records in the file.
    run(tmp_path, ())
    assert [r["run_id"] for r in results(tmp_path)["runs"]] == ["fp", "w4", "w2"]

    # A checkpoint asked for (e.g. by a landscape) trains again even with nothing after it.
    shutil.rmtree(tmp_path / "runs")
    _, trained = run(tmp_path, ("w4", "w2"), keep=("w2",))
    assert trained == ["fp", "w2"]
    assert [r["run_id"] for r in results(tmp_path)["runs"]] == ["fp", "w4", "w2"]


def test_a_parent_trained_again_to_other_weights_makes_its_paired_runs_train_again(tmp_path):
    first, _ = run(tmp_path, ("w4", "w2"))
    # As if FP and its runs had been trained on another machine, to other weights.
    content = results(tmp_path)
    for record in content["runs"]:
        record["checkpoint_digest" if record["run_id"] == "fp" else "parent_digest"] = "elsewhere"
    (tmp_path / "results.json").write_text(json.dumps(content))
    shutil.rmtree(tmp_path / "runs")
    again, trained = run(tmp_path, ("w4", "w2"), keep=("w2",))
    assert trained == ["fp", "w4", "w2"]  # W4 is not needed, but its start is gone
    assert again["fp"]["reproduces_earlier_record"] is False
    digest = first["fp"]["checkpoint_digest"]
    assert again["w4"]["parent_digest"] == again["fp"]["checkpoint_digest"] == digest
    superseded = results(tmp_path)["superseded_runs"]
    assert [(r["run_id"], r["checkpoint_digest"]) for r in superseded] == [("fp", "elsewhere")]


def test_an_archived_parent_is_restored_instead_of_trained(tmp_path):
    first, trained = run(tmp_path, ("w4",), archive=True)
    (archive,) = os.listdir(tmp_path / "archive")
    assert archive == f"fp-{first['fp']['config_hash']}.tar.gz"
    shutil.rmtree(tmp_path / "runs")
    grown, trained = run(tmp_path, ("w4", "w2"), archive=True)
    assert trained == ["w2"]  # FP comes from its archive, with its checkpoint
    assert grown["w2"]["parent_digest"] == first["fp"]["checkpoint_digest"] and grown["w4"] == first["w4"]
    steps = os.listdir(tmp_path / "runs" / first["fp"]["workdir"] / "checkpoints")
    assert steps == ["10"]
