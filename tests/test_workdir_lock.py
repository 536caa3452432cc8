"""One process per workdir: a second run on a live workdir stops at once; a killed run's lock
does not block its restart."""

import os
import signal
import subprocess
import sys
import time

import pytest

from jaxquant.train.lock import LOCK_FILE, WorkdirBusyError, workdir_lock

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLI_CONFIG = os.path.join(REPO, "tests", "cli_config.py")
HOLD = """import sys, time
from jaxquant.train.lock import workdir_lock
with workdir_lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(60)
"""


def test_a_held_workdir_refuses_a_second_holder(tmp_path):
    with workdir_lock(str(tmp_path)):
        with pytest.raises(WorkdirBusyError, match=f"is in use by process {os.getpid()} on host"):
            with workdir_lock(str(tmp_path)):
                pass
    with workdir_lock(str(tmp_path)):  # released at the end of the block
        pass


def hold_in_subprocess(workdir):
    env = {**os.environ, "PYTHONPATH": REPO}
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, workdir], stdout=subprocess.PIPE, text=True, env=env
    )
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_a_killed_holder_leaves_no_live_lock(tmp_path):
    holder = hold_in_subprocess(str(tmp_path))
    with pytest.raises(WorkdirBusyError, match=f"process {holder.pid}"):
        with workdir_lock(str(tmp_path)):
            pass
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert os.path.exists(tmp_path / LOCK_FILE)  # the file stays behind, unlocked
    with workdir_lock(str(tmp_path)):
        pass


def test_cli_on_a_live_workdir_stops_at_once_with_one_line(tmp_path):
    holder = hold_in_subprocess(str(tmp_path))
    try:
        start = time.time()
        env = {**os.environ, "PYTHONPATH": REPO, "JAX_PLATFORMS": "cpu"}
        command = [sys.executable, "-m", "jaxquant.main", f"--config={CLI_CONFIG}", f"--workdir={tmp_path}"]
        done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
        assert done.returncode == 2, done.stderr[-2000:]
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("jaxquant: error: workdir "), done.stderr
        assert f"in use by process {holder.pid}" in lines[0]
        assert not os.path.exists(tmp_path / "metrics.jsonl")  # nothing of the live run was touched
        assert time.time() - start < 120
    finally:
        holder.kill()
        holder.wait()
