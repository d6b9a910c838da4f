"""Output folders that runs cannot corrupt or mistake: one owner at a time, finished work
recognised by its config and its inputs' fingerprints, failed runs that do not lock a folder."""

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass

import pytest

from etegrl.config import ConfigError
from etegrl.data import load_processed
from etegrl.prepare import main as prepare_main
from etegrl.report import main as report_main
from etegrl.report import read_log
from etegrl.runs import (LOCK, OutputLock, claim_output, config_inputs, input_fingerprints,
                         mark_done)
from tests.conftest import ROOT, write
from tests.test_bad_input import one_error

INTER = "user_id:token\titem_id:token\ttimestamp:float\n"


def inter_rows(users: int) -> str:
    return INTER + "".join(f"u{u}\ti{(u * 3 + k) % 12}\t{k}\n" for u in range(users)
                           for k in range(6))


def prepare_args(src, out, *extra):
    return ["format=recbole_inter", f"data_dir={src}", "dataset=toy", f"output_dir={out}",
            "max_len=4", "sasrec_epochs=1", "sasrec_hidden=8", "sasrec_layers=1",
            "sasrec_heads=1", *extra]


def finetune_cmd(tiny_data, trained_run, out, epochs):
    return [sys.executable, "-m", "finetune", f"data_dir={tiny_data / 'data'}",
            f"checkpoint={trained_run / 'best'}", f"output_dir={out}", "max_len=8",
            f"epochs={epochs}", "batch_size=16", "progress=false", "save_state_every=2"]


# the second command, its imports done before the race starts, so that it claims the folder
# while the first one is surely training
SECOND = """
import sys
from finetune.__main__ import main
print("ready", flush=True)
sys.stdin.readline()
sys.exit(main(sys.argv[1:]))
"""


def test_second_run_on_a_folder_in_use_is_refused(tiny_data, trained_run, tmp_path):
    """The race that corrupted a log: the same command started while the first one trains.
    The second stops at once naming the owner; the first ends normally, its log whole."""
    out = tmp_path / "race"
    cmd = finetune_cmd(tiny_data, trained_run, out, epochs=8)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    second = subprocess.Popen([sys.executable, "-c", SECOND, *cmd[3:]], cwd=ROOT, env=env,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    assert second.stdout.readline().strip() == "ready"
    first = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not (out / "log.jsonl").is_file() or not (out / "log.jsonl").stat().st_size:
            assert first.poll() is None, first.communicate()
            assert time.time() < deadline, "the first run never started training"
            time.sleep(0.05)
        _, refused = second.communicate("go\n", timeout=120)
        assert first.poll() is None, "the first run ended before the second was tried"
    finally:
        _, stderr = first.communicate(timeout=300)
        second.kill()
    assert second.returncode == 2
    assert f"output_dir {out} is in use by another run (pid {first.pid})" in refused
    assert "Traceback" not in refused
    assert first.returncode == 0, stderr
    records = read_log(out / "log.jsonl")  # every line parses
    steps = [r["step"] for r in records if "step" in r]
    assert steps == list(range(1, len(steps) + 1)) and len(steps) > 0  # none missing or twice
    assert report_main([str(tmp_path)]) == 0


def test_a_killed_owner_leaves_no_lock_behind(tmp_path):
    out = tmp_path / "out"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from etegrl.runs import OutputLock; "
         f"lock = OutputLock({str(out)!r}).acquire(); print('held', flush=True); time.sleep(60)"],
        cwd=ROOT, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(ConfigError, match=rf"in use by another run \(pid {holder.pid}\)"):
            OutputLock(out).acquire()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert (out / LOCK).is_file()  # the file stays; the lock went with its process
    with OutputLock(out):
        pass


def test_changed_source_file_is_prepared_again(tmp_path):
    """A source cut from 72 to 30 rows, the same command again: the data is read anew (before,
    'already prepared … nothing to do' kept the old data)."""
    src = write(tmp_path / "src" / "toy.inter", inter_rows(12)).parent
    out = tmp_path / "out"
    assert prepare_main(prepare_args(src, out)) == 0
    assert load_processed(out).stats["interactions"] == 72
    assert prepare_main(prepare_args(src, out)) == 0  # unchanged: reused
    write(src / "toy.inter", inter_rows(5))
    assert prepare_main(prepare_args(src, out)) == 0
    assert load_processed(out).stats["interactions"] == 30
    recorded = json.loads((out / "inputs.json").read_text())
    assert list(recorded) == [str(src / "toy.inter")]


def test_failed_run_does_not_lock_its_folder(tmp_path, capsys):
    """Following prepare's own advice on the same output_dir works without overwrite=true."""
    write(tmp_path / "src" / "toy.inter", inter_rows(6) + "lonely\ti1\t0\nlonely\ti2\t1\n")
    out = tmp_path / "out"
    assert prepare_main(prepare_args(tmp_path / "src", out)) == 2
    assert "set k_core=3" in one_error(capsys)
    assert prepare_main(prepare_args(tmp_path / "src", out, "k_core=3")) == 0
    assert load_processed(out).stats["users"] == 6


@dataclass
class Toy:
    data_dir: str
    checkpoint: str = ""
    seed: int = 0
    overwrite: bool = False
    INPUT_FIELDS = ("data_dir", "checkpoint")


def test_claim_rules(tmp_path):
    data = tmp_path / "data"
    write(data / "a.txt", "one")
    out = tmp_path / "out"
    quiet = []
    cfg = Toy(data_dir=str(data))
    inputs = input_fingerprints(config_inputs(cfg))
    assert list(inputs) == [str(data)]  # an empty checkpoint names nothing
    assert claim_output(cfg, out, "toy", inputs, log=quiet.append) is False
    mark_done(out)
    assert claim_output(cfg, out, "toy", inputs, log=quiet.append) is True
    # a folder's fingerprint follows its files' bytes, not a lock or resumable state in it
    write(data / LOCK, "123")
    write(data / "resume" / "state.pt", "x")
    assert input_fingerprints(config_inputs(cfg)) == inputs
    write(data / "a.txt", "two")
    changed = input_fingerprints(config_inputs(cfg))
    assert changed != inputs
    assert claim_output(cfg, out, "toy", changed, log=quiet.append) is False
    assert "inputs changed" in quiet[-1] and not (out / "DONE").exists()
    # another config: refused while the folder holds progress, replaced when it holds none
    (out / "resume").mkdir()
    with pytest.raises(ConfigError, match=r"keys that differ: seed\) that has not finished"):
        claim_output(Toy(data_dir=str(data), seed=1), out, "toy", changed, log=quiet.append)
    (out / "resume").rmdir()
    assert claim_output(Toy(data_dir=str(data), seed=1), out, "toy", changed,
                        log=quiet.append) is False
    assert "replacing a toy run that ended before saving anything" in quiet[-1]
    mark_done(out)
    with pytest.raises(ConfigError, match=r"keys that differ: seed\) that finished"):
        claim_output(cfg, out, "toy", changed, log=quiet.append)
