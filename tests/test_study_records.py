"""A study on a fresh checkout: runs whose workdirs are gone are taken from the results file
(:class:`jaxquant.study.runs.Study`), and trained again only where a later run needs them."""

import json
import shutil

from conftest import tiny_config

from jaxquant.study.runs import RunSpec, Study, TraceSettings

TRACE = TraceSettings(batch_size=16, num_probes=2)


def specs(children: tuple[str, ...]) -> list[RunSpec]:
    fp = tiny_config(method__name="fp", train__num_steps=10, train__checkpoint_every=10)
    out = [RunSpec("fp", "train", fp, {"method": "fp"})]
    for name in children:
        qat = tiny_config(method__name="lsq", train__num_steps=4, train__checkpoint_every=4)
        qat.quant.w_bits = qat.quant.a_bits = 2 if name == "w2" else 4
        out.append(RunSpec(name, "train", qat, {"method": "lsq"}, parent="fp", flatness=True))
    return out


def run(tmp_path, children, keep=()):
    trained = []

    def log(line):
        if ": running in " in line:
            trained.append(line.split(":")[0].removeprefix("[study] "))

    study = Study(str(tmp_path / "runs"), specs(children), str(tmp_path / "results.json"), {}, TRACE, log=log,
                  keep_checkpoints=keep)  # fmt: skip
    return {record["run_id"]: record for record in study.run()}, trained


def test_runs_come_from_the_results_file_unless_a_later_run_needs_their_checkpoint(tmp_path):
    first, trained = run(tmp_path, ("w4",))
    assert trained == ["fp", "w4"] and first["w4"]["flatness"]["status"] == "ok"

    # A fresh checkout: no workdir, the results file is there. Nothing trains.
    shutil.rmtree(tmp_path / "runs")
    again, trained = run(tmp_path, ("w4",))
    assert trained == [] and not (tmp_path / "runs").exists()
    assert again == first

    # A new run starts from FP: FP trains again (and reproduces its record), W4 does not.
    grown, trained = run(tmp_path, ("w4", "w2"))
    assert trained == ["fp", "w2"]
    assert grown["fp"]["reproduces_earlier_record"] is True
    assert grown["fp"]["accuracy"] == first["fp"]["accuracy"] and grown["w4"] == first["w4"]

    # A call over fewer specs (an earlier stage) keeps the other runs' records in the file.
    run(tmp_path, ())
    assert [r["run_id"] for r in json.loads((tmp_path / "results.json").read_text())["runs"]] == [
        "fp", "w4", "w2"
    ]  # fmt: skip

    # A checkpoint asked for (e.g. by a landscape) trains again even with nothing after it.
    shutil.rmtree(tmp_path / "runs")
    _, trained = run(tmp_path, ("w4", "w2"), keep=("w2",))
    assert trained == ["fp", "w2"]
    saved = json.loads((tmp_path / "results.json").read_text())
    assert [r["run_id"] for r in saved["runs"]] == ["fp", "w4", "w2"]
