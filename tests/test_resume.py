"""Resume after a kill: each stage, run as its own process, is SIGKILLed mid-epoch, started again
with the same command, and ends with the same weights and metrics as an uninterrupted run."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from etegrl.checkpoint import atomic_dir, recover_dir
from etegrl.resume import load_state

ROOT = Path(__file__).resolve().parents[1]
TINY_MODEL = ["d_model=32", "d_ff=64", "num_layers=1", "num_decoder_layers=1", "num_heads=2",
              "d_kv=16", "code_num=8", "e_dim=8", "tok_hidden=[32]"]


def command(module: str, args: list[str]) -> list[str]:
    return [sys.executable, "-m", module, *args, "progress=false"]


def run(module: str, args: list[str]) -> None:
    done = subprocess.run(command(module, args), cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]


def run_and_kill(module: str, args: list[str], out: Path, at_step: int) -> None:
    """Start the stage and SIGKILL it as soon as its log shows step ``at_step``."""
    proc = subprocess.Popen(command(module, args), cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    log = out / "log.jsonl"
    deadline = time.time() + 300
    while proc.poll() is None and time.time() < deadline:
        if log.is_file() and max(map(int, re.findall(r'"step": (\d+)', log.read_text())),
                                 default=-1) >= at_step:
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.005)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, f"not killed in time: {proc.stderr.read()[-2000:]}"
    assert not (out / "DONE").exists()


def weights(path: Path) -> dict:
    return load_file(str(path / "model.safetensors"))


def check_same(a: Path, b: Path) -> None:
    ra, rb = (json.loads((p / "results.json").read_text()) for p in (a, b))
    assert ra["test"] == rb["test"] and ra["valid"] == rb["valid"]
    assert ra["best_epoch"] == rb["best_epoch"]
    wa, wb = weights(a / "best"), weights(b / "best")
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert load_file(str(a / "best" / "codes.safetensors"))["codes"].equal(
        load_file(str(b / "best" / "codes.safetensors"))["codes"])
    # the resumed run's log is the uninterrupted one's, step for step
    steps = [[json.loads(line).get("step") for line in (p / "log.jsonl").read_text().splitlines()]
             for p in (a, b)]
    assert steps[0] == steps[1]
    assert not (b / "resume").exists()  # the state goes once the run is done


def stage_args(stage: str, tiny_data: Path, out: Path, start: Path | None) -> list[str]:
    data = f"data_dir={tiny_data / 'data'}"
    common = [data, f"output_dir={out}", "max_len=8", "save_state_every=2", "seed=3"]
    if stage == "pretrain":
        # cycle 2 after one warm-up epoch: recommender and tokenizer epochs (codes rebuilt)
        return common + TINY_MODEL + ["epochs=4", "warmup_epochs=1", "cycle=2", "batch_size=16",
                                      "tokenizer_pretrain_epochs=3", "dropout_rate=0.1"]
    if stage == "finetune":
        return common + [f"checkpoint={start}", "epochs=3", "batch_size=16", "dropout_rate=0.1"]
    rl = common + [f"checkpoint={start}", "epochs=2", "num_generations=4",
                   "per_device_train_batch_size=16", "rows_per_user=2", "learning_rate=1e-3",
                   "group_source=sampling", "inject_target=true"]
    if stage == "rl_steps":  # trl's step options: validation, log windows and saves by steps
        rl = rl + ["eval_steps=3", "logging_steps=2", "save_steps=2", "save_state_every=0",
                   "gradient_accumulation_steps=2", "per_device_train_batch_size=8",
                   "valid_users=20", "item_baseline=0.5"]  # its running means resume too
    if stage == "rl_windows":  # the sft term's window passes (8 batches) run across epochs
        rl = rl + ["sft_weight=1.0", "sft_rows=sequences", "sft_batch_size=5"]
    return rl


@pytest.fixture(scope="module")
def causal_run(tiny_data, tmp_path_factory):
    """A recommender with a causal encoder, which sft_rows=sequences needs."""
    out = tmp_path_factory.mktemp("causal")
    run("pretrain", [f"data_dir={tiny_data / 'data'}", f"output_dir={out}", "max_len=8",
                     *TINY_MODEL, "epochs=2", "warmup_epochs=1", "batch_size=16",
                     "tokenizer_pretrain_epochs=2", "train_on=sequences", "causal_encoder=true"])
    return out


@pytest.mark.parametrize("stage", ["pretrain", "finetune", "rl", "rl_steps", "rl_windows"])
def test_killed_stage_resumes_to_the_same_result(stage, tiny_data, trained_run, tmp_path, request):
    start = None if stage == "pretrain" else trained_run / "best"
    if stage == "rl_windows":
        start = request.getfixturevalue("causal_run") / "best"
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    module = stage.split("_")[0]
    run(module, stage_args(stage, tiny_data, whole, start))
    per_epoch = max(json.loads(line).get("step", 0) for line in
                    (whole / "log.jsonl").read_text().splitlines()
                    if json.loads(line).get("epoch") == 0)
    at = per_epoch + per_epoch // 2 + 1  # the middle of the second epoch, past a mid-epoch save
    run_and_kill(module, stage_args(stage, tiny_data, killed, start), killed, at)
    state = load_state(killed)
    assert state is not None and state["step"] < per_epoch * 2  # it goes on from mid-run
    run(module, stage_args(stage, tiny_data, killed, start))
    check_same(whole, killed)
    if stage == "rl_steps":  # the item baseline's running means went on from where they were
        logged = [[json.loads(line).get("item_baseline") for line in
                   (p / "log.jsonl").read_text().splitlines()] for p in (whole, killed)]
        assert any(v is not None for v in logged[0]) and logged[0] == logged[1]
    if stage == "rl_windows":  # the window losses too: the resumed pass went on where it was
        logged = [[json.loads(line).get("sft") for line in
                   (p / "log.jsonl").read_text().splitlines()] for p in (whole, killed)]
        assert any(v is not None for v in logged[0]) and logged[0] == logged[1]


def test_kill_between_renames_keeps_the_last_good_folder(tmp_path):
    path = tmp_path / "best"
    with atomic_dir(path) as tmp:
        (tmp / "x").write_text("good")
    path.rename(path.with_name("best.old"))  # as if killed after the first rename
    (tmp_path / "best.tmp").mkdir()          # … with the new folder never renamed
    assert (recover_dir(path) / "x").read_text() == "good"


def test_failed_save_leaves_the_previous_checkpoint(tmp_path):
    path = tmp_path / "best"
    with atomic_dir(path) as tmp:
        (tmp / "marker").write_text("first")
    with pytest.raises(RuntimeError):
        with atomic_dir(path) as tmp:
            (tmp / "marker").write_text("second")
            raise RuntimeError("killed while writing")
    assert (path / "marker").read_text() == "first"


def test_same_seed_same_run(tiny_data, trained_run, tmp_path):
    """Determinism on CPU: two runs with one seed give identical weights, logs and metrics."""
    from finetune.__main__ import main

    for name in ("a", "b"):
        assert main([f"data_dir={tiny_data / 'data'}", f"checkpoint={trained_run / 'best'}",
                     f"output_dir={tmp_path / name}", "max_len=8", "epochs=2", "batch_size=32",
                     "dropout_rate=0.2", "seed=11", "progress=false"]) == 0
    check_same(tmp_path / "a", tmp_path / "b")
