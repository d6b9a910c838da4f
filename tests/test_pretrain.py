import json
import shutil

import pytest
import torch

from safetensors.torch import load_file, save_file

from etegrl.checkpoint import CheckpointError, load_checkpoint
from etegrl.embeddings import load_embedding
from etegrl.generation import beam_search
from pretrain.__main__ import main
from pretrain.config import PretrainConfig
from pretrain.loop import PretrainStage


def tiny_config(root, **kw):
    values = dict(data_dir=str(root / "data"), output_dir=str(root / "out"), d_model=32, d_ff=64,
                  num_layers=1, num_decoder_layers=1, num_heads=2, d_kv=16, max_len=8,
                  code_num=8, levels=3, e_dim=8, tok_hidden=[32], tokenizer_pretrain_epochs=5,
                  epochs=4, warmup_epochs=1, cycle=2, batch_size=64, eval_every=1, patience=0,
                  beam=20, progress=False, lr_id=1e-2, seed=0)
    values.update(kw)
    return PretrainConfig(**values)


def snapshot(module):
    return {k: v.detach().clone() for k, v in module.named_parameters()}


def changed(before, module):
    return {k for k, v in module.named_parameters() if not torch.equal(before[k], v.detach())}


def test_alternation_freezes_the_right_half(tiny_data):
    stage = PretrainStage(tiny_config(tiny_data, w_sia=0.1, w_psa=0.1), log=lambda *_: None)
    stage.setup()
    assert [stage.epoch_kind(e) for e in range(4)] == ["warmup", "recommender", "tokenizer", "recommender"]
    tok, rec = snapshot(stage.tokenizer), snapshot(stage.model)
    assert stage.run_epoch(0) == "warmup"
    assert changed(tok, stage.tokenizer) == set()
    warm = changed(rec, stage.model)
    assert not any(k.startswith(("sia_adapter", "psa_adapter")) for k in warm)  # no SIA/PSA yet
    tok, rec = snapshot(stage.tokenizer), snapshot(stage.model)
    assert stage.run_epoch(1) == "recommender"
    assert changed(tok, stage.tokenizer) == set()
    assert changed(rec, stage.model) == set(rec)  # every recommender parameter trained
    tok, rec = snapshot(stage.tokenizer), snapshot(stage.model)
    table_before = stage.table
    assert stage.run_epoch(2) == "tokenizer"
    assert changed(rec, stage.model) == set()
    assert changed(tok, stage.tokenizer) == set(tok)  # every tokenizer parameter trained
    # the codes were rebuilt from the trained tokenizer
    assert stage.table is not table_before
    prefix, _ = stage.tokenizer.encode_items(stage.semantic[1:])
    assert torch.equal(stage.table.codes[1:, :3], prefix)
    stage.cleanup()


def test_tokenizer_pretraining_never_keeps_the_untrained_start(tiny_data, monkeypatch):
    """The k-means start over the random encoder's latents may collide least of all, but only
    trained weights compete (ties to the later check); a code rebuild is logged with its stats."""
    import pretrain.loop as loop

    calls = []

    def counted(tokenizer, items):  # the start collides least, every trained check alike
        calls.append(1)
        return 0 if len(calls) == 1 else 5

    monkeypatch.setattr(loop, "collided_items", counted)
    stage = PretrainStage(tiny_config(tiny_data, tokenizer_pretrain_epochs=4,
                                      tokenizer_check_every=2), log=lambda *_: None)
    stage.setup()
    assert len(calls) == 3  # the start, then epochs 1 and 3
    assert stage.tokenizer_pretrain_info == {"kept_epoch": 3, "collided_items": 5,
                                             "init_collided_items": 0}
    assert stage.run_epoch(2) == "tokenizer"
    stage.cleanup()
    records = [json.loads(line) for line in (stage.out / "log.jsonl").read_text().splitlines()]
    rebuilt = [r for r in records if r.get("kind") == "codes_rebuilt"]
    assert len(rebuilt) == 1 and rebuilt[0]["epoch"] == 2
    assert rebuilt[0]["codes"] == stage.code_stats


def test_tiger_mode_never_touches_the_tokenizer(tiny_data):
    stage = PretrainStage(tiny_config(tiny_data, mode="tiger", output_dir=str(tiny_data / "t")),
                          log=lambda *_: None)
    stage.setup()
    tok = snapshot(stage.tokenizer)
    codes = stage.table.codes.clone()
    for e in range(3):
        assert stage.run_epoch(e) == "tiger"
    assert changed(tok, stage.tokenizer) == set() and torch.equal(codes, stage.table.codes)
    stage.cleanup()


def test_stage_end_to_end_and_checkpoint_round_trip(tiny_data, trained_run):
    out = trained_run
    results = json.loads((out / "results.json").read_text())
    assert set(results["test"]) >= {"recall@1", "recall@5", "recall@10", "ndcg@5", "ndcg@10",
                                    "coverage@10"}
    assert len((out / "log.jsonl").read_text().splitlines()) > 3
    a = load_checkpoint(out / "best")
    b = load_checkpoint(out / "best")
    hist = torch.tensor([[1, 2, 3, 0], [5, 6, 7, 8]])
    beams_a = beam_search(a["model"], a["table"], hist)
    beams_b = beam_search(b["model"], b["table"], hist)
    assert torch.equal(beams_a["items"], beams_b["items"])
    assert torch.allclose(beams_a["scores"], beams_b["scores"])
    # the tokenizer round-trips too: it gives the saved codes' prefixes again
    semantic = load_embedding(tiny_data / "data" / "embeddings" / "semantic.safetensors")
    prefix, _ = a["tokenizer"].encode_items(semantic[1:])
    if results["codes"]["reassigned_items"] == 0:
        assert torch.equal(prefix, a["table"].codes[1:, :3])


def test_mismatched_checkpoint_fails_loudly(trained_run, tmp_path):
    out = trained_run
    bad = tmp_path / "bad"
    shutil.copytree(out / "best", bad)
    state = load_file(str(bad / "tokenizer.safetensors"))
    state.pop(next(iter(state)))
    save_file(state, str(bad / "tokenizer.safetensors"))
    with pytest.raises(CheckpointError, match="tokenizer.safetensors: does not match"):
        load_checkpoint(bad)
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        load_checkpoint(tmp_path)


def test_tiny_configs_run_data_to_pretrain(tmp_path):
    """The shipped tiny configs: MovieLens-100K preparation, then a pretrain run with warm-up,
    a recommender and a tokenizer epoch (codes rebuilt) and a test evaluation."""
    from etegrl.data.readers import DataError, movielens_100k_files
    from etegrl.prepare import main as prepare_main
    from tests.conftest import ROOT

    try:
        movielens_100k_files()
    except DataError as err:  # the test command installs it; a bare environment may not
        pytest.skip(str(err))
    data = tmp_path / "data"
    assert prepare_main(["--config", str(ROOT / "configs/tiny/prepare.yaml"), f"output_dir={data}"]) == 0
    out = tmp_path / "pretrain"
    assert main(["--config", str(ROOT / "configs/tiny/pretrain.yaml"), f"data_dir={data}",
                 f"output_dir={out}"]) == 0
    results = json.loads((out / "results.json").read_text())
    kinds = [json.loads(line)["kind"] for line in (out / "log.jsonl").read_text().splitlines()
             if '"valid"' in line]
    assert kinds == ["warmup", "recommender", "tokenizer", "recommender"]
    assert results["codes"]["distinct_prefixes"] > 100
    assert 0.0 <= results["test"]["ndcg@10"] <= results["test"]["recall@10"] <= 1.0


def test_report_table_and_curves(trained_run, tmp_path, capsys):
    from etegrl.report import main

    root = tmp_path / "runs"
    root.mkdir()
    (root / "pretrain").symlink_to(trained_run, target_is_directory=True)
    assert main([str(root)]) == 0
    results = json.loads((trained_run / "results.json").read_text())
    row = next(line for line in (root / "results.md").read_text().splitlines()
               if line.startswith("| ETEGRec pretrain |"))
    assert f"| {results['test']['ndcg@10']:.4f} |" in row
    assert results["protocol"] in (root / "results.md").read_text()
    pytest.importorskip("matplotlib", reason="curves need the plot extra")
    png = trained_run / "curves.png"
    assert png.is_file() and png.read_bytes()[:4] == b"\x89PNG"
    assert f"curves: {root / 'pretrain' / 'curves.png'}" in capsys.readouterr().out


def test_time_budget_stops_after_a_recommender_epoch(tiny_data, tmp_path):
    """A budget already spent after the first epoch: pretraining still does not stop right
    after a tokenizer epoch (its new codes untrained), it validates the epoch it stops at."""
    import json

    from pretrain.__main__ import main

    out = tmp_path / "pt"
    assert main([f"data_dir={tiny_data / 'data'}", f"output_dir={out}", "d_model=32", "d_ff=64",
                 "num_layers=1", "num_decoder_layers=1", "num_heads=2", "d_kv=16", "max_len=8",
                 "code_num=8", "e_dim=8", "tok_hidden=[32]", "tokenizer_pretrain_epochs=2",
                 "epochs=8", "warmup_epochs=0", "cycle=2", "eval_every=2", "batch_size=64",
                 "time_budget=0.001", "progress=false"]) == 0
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert sorted({r["epoch"] for r in records if "step" in r}) == [0, 1]  # 0 is a tokenizer epoch
    assert [r["epoch"] for r in records if "valid" in r] == [1]
    assert records[-1]["kind"] == "budget_spent" and records[-1]["epoch"] == 1
    assert json.loads((out / "results.json").read_text())["best_epoch"] == 1
