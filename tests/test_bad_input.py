"""Bad input through the commands users run: one clear ``error:`` line naming the file, line or
key, exit code 2, no traceback, and nothing of an earlier run overwritten. (Reader-, config-,
code-table- and reward-level cases are tested beside their modules.)"""

import json
import shutil

import pytest
import torch

from etegrl.embeddings import save_embedding
from etegrl.prepare import main as prepare_main
from etegrl.resume import STATE_DIR
from finetune.__main__ import main as finetune_main
from pretrain.__main__ import main as pretrain_main
from rl.__main__ import main as rl_main
from tests.conftest import write


def one_error(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_empty_history_in_a_sequence_file(tmp_path, capsys):
    write(tmp_path / "src" / "seq.txt", "u1 a b c d\nu2\nu3 a b c\n")
    code = prepare_main([f"data_dir={tmp_path / 'src'}", "dataset=seq.txt", "format=sequence_txt",
                         f"output_dir={tmp_path / 'out'}", "semantic_parts=[tags]",
                         "tag_fields=[]"])
    assert code == 2
    assert "seq.txt:2: user 'u2' has 0 interaction(s)" in one_error(capsys)


def test_empty_history_in_a_presplit_row(tmp_path, capsys):
    from etegrl.data import DataError
    from etegrl.data import read_source

    write(tmp_path / "E.emb_map.json", json.dumps({"x": 1, "y": 2, "z": 3}))
    rows = {"train": {"user_id": "u", "inter_history": [], "target_id": "x"},
            "valid": {"user_id": "u", "inter_history": ["x"], "target_id": "y"},
            "test": {"user_id": "u", "inter_history": ["x", "y"], "target_id": "z"}}
    for split, row in rows.items():
        write(tmp_path / f"E.{split}.jsonl", json.dumps(row) + "\n")
    with pytest.raises(DataError, match=r"E\.train\.jsonl:1: empty history for user 'u'"):
        read_source("etegrec_jsonl", data_dir=str(tmp_path), dataset="E")


def test_missing_checkpoint(tiny_data, tmp_path, capsys):
    code = finetune_main([f"data_dir={tiny_data / 'data'}", f"checkpoint={tmp_path / 'nope'}",
                          f"output_dir={tmp_path / 'ft'}", "progress=false"])
    assert code == 2
    assert f"{tmp_path / 'nope'}: not a checkpoint" in one_error(capsys)


def test_output_dir_holding_another_stage_run(tiny_data, trained_run, tmp_path, capsys):
    out = tmp_path / "ft"
    args = [f"data_dir={tiny_data / 'data'}", f"checkpoint={trained_run / 'best'}",
            f"output_dir={out}", "max_len=8", "epochs=1", "batch_size=64", "progress=false"]
    assert finetune_main(args) == 0
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert finetune_main(args[:-2] + ["batch_size=32", "progress=false"]) == 2
    assert "holds another finetune run (keys that differ: batch_size)" in one_error(capsys)
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    foreign = tmp_path / "foreign"
    write(foreign / "notes.txt", "mine")
    assert finetune_main(args[:2] + [f"output_dir={foreign}", "progress=false"]) == 2
    assert "is not empty and holds no finetune run" in one_error(capsys)
    assert (foreign / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("bad", ["rows", "nan"])
def test_semantic_embedding_with_wrong_rows_or_nan(tiny_data, tmp_path, capsys, bad):
    data = tmp_path / "data"
    shutil.copytree(tiny_data / "data", data)
    path = data / "embeddings" / "semantic.safetensors"
    n = json.loads((data / "stats.json").read_text())["items"]
    semantic = torch.zeros(n + (3 if bad == "rows" else 1), 24)
    if bad == "nan":
        semantic[5, 2] = float("nan")
    save_embedding(semantic, path)
    code = pretrain_main([f"data_dir={data}", f"output_dir={tmp_path / 'pt'}", "progress=false"])
    assert code == 2
    message = one_error(capsys)
    assert str(path) in message
    assert ("expected" in message) if bad == "rows" else ("NaN" in message and "[5]" in message)


@pytest.mark.parametrize("body, extra, message", [
    ("    raise ZeroDivisionError('no')\n", [], "reward function 'boom' raised ZeroDivisionError('no')"),
    ("    import time\n    time.sleep(30)\n    return [0.0] * len(completions)\n",
     ["reward_timeout=0.5"], "reward function 'boom' ran longer than reward_timeout (0.5 s)"),
])
def test_reward_function_that_raises_or_hangs_mid_run(tiny_data, trained_run, tmp_path, capsys,
                                                      body, extra, message):
    script = write(tmp_path / "r.py", "def boom(prompts, completions, completion_ids, **kw):\n"
                   + body)
    code = rl_main([f"data_dir={tiny_data / 'data'}", f"checkpoint={trained_run / 'best'}",
                    f"output_dir={tmp_path / 'rl'}", "max_len=8", "num_generations=4",
                    "per_device_train_batch_size=16", f"reward_funcs=[hit,{script}:boom]",
                    "progress=false", *extra])
    assert code == 2
    assert message in one_error(capsys)


def test_resume_state_of_another_model(tiny_data, trained_run, tmp_path, capsys):
    from finetune.config import FinetuneConfig
    from finetune.loop import FinetuneStage

    out = tmp_path / "ft"
    args = [f"data_dir={tiny_data / 'data'}", f"checkpoint={trained_run / 'best'}",
            f"output_dir={out}", "max_len=8", "epochs=1", "batch_size=64", "progress=false"]
    assert finetune_main(args) == 0
    (out / "DONE").unlink()  # as if killed after saving a state …
    stage = FinetuneStage(FinetuneConfig(**dict(a.split("=", 1) for a in args[:3])),
                          log=lambda *_: None)
    stage.setup()
    stage.save_state(1, 0)
    stage.cleanup()
    path = out / STATE_DIR / "state.pt"
    state = torch.load(path, weights_only=True)
    state["objects"]["model"].pop(next(iter(state["objects"]["model"])))  # … of another model
    torch.save(state, path)
    assert finetune_main(args) == 2
    assert f"{out / STATE_DIR}: does not match this run's model" in one_error(capsys)
    del state["rng"]
    torch.save(state, path)
    assert finetune_main(args) == 2
    assert "state.pt: not a resume state of this version (missing rng)" in one_error(capsys)
    path.write_bytes(b"not a torch file")
    assert finetune_main(args) == 2
    assert "state.pt: unreadable resume state" in one_error(capsys)
