import json

import pytest
import torch

from etegrl.data import load_processed, read_topk
from etegrl.metrics import list_metrics
from etegrl.checkpoint import load_checkpoint
from finetune.__main__ import main
from finetune.config import FinetuneConfig
from finetune.loop import FinetuneStage


def config(tiny_data, trained_run, out, **kw):
    values = dict(data_dir=str(tiny_data / "data"), checkpoint=str(trained_run / "best"),
                  output_dir=str(out), max_len=8, epochs=2, batch_size=64, lr=5e-3,
                  progress=False, patience=0)
    values.update(kw)
    return FinetuneConfig(**values)


def test_finetune_trains_the_recommender_only(tiny_data, trained_run, tmp_path):
    stage = FinetuneStage(config(tiny_data, trained_run, tmp_path / "ft"), log=lambda *_: None)
    stage.setup()
    model_before = {k: v.clone() for k, v in stage.model.state_dict().items()}
    tok_before = {k: v.clone() for k, v in stage.tokenizer.state_dict().items()}
    codes_before = stage.table.codes.clone()
    stage.run_epoch(0)
    unchanged = {k for k, v in stage.model.named_parameters() if torch.equal(model_before[k], v)}
    # the SIA/PSA adapters serve pretraining's alignment losses only; all the rest trains
    assert unchanged == {"sia_adapter.weight", "sia_adapter.bias", "psa_adapter.weight",
                         "psa_adapter.bias"}
    assert all(torch.equal(tok_before[k], v) for k, v in stage.tokenizer.state_dict().items())
    assert torch.equal(codes_before, stage.table.codes)
    stage.cleanup()


def test_finetune_end_to_end(tiny_data, trained_run, tmp_path):
    out = tmp_path / "ft"
    assert main([f"data_dir={tiny_data / 'data'}", f"checkpoint={trained_run / 'best'}",
                 f"output_dir={out}", "max_len=8", "epochs=2", "batch_size=64",
                 "progress=false"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["stage"] == "finetune" and "ndcg@10" in results["test"]
    # the ranked lists it wrote give back every reported metric
    lists = read_topk(out / "test_topk.jsonl")
    processed = load_processed(tiny_data / "data")
    assert sorted(lists) == sorted(processed.splits["test"]["user"])
    users = sorted(lists)
    top = torch.tensor([lists[u][1][:20] + [0] * (20 - len(lists[u][1])) for u in users])
    again = list_metrics(top, torch.tensor([lists[u][0] for u in users]),
                         n_items=processed.n_items)
    for key, value in again.items():
        assert results["test"][key] == pytest.approx(value), key
    assert {"popular10_share@10", "history_share@10"} <= set(results["test"])
    pre = load_checkpoint(trained_run / "best")
    post = load_checkpoint(out / "best")
    assert torch.equal(pre["table"].codes, post["table"].codes)


def test_lora_trains_adapters_and_saves_a_merged_plain_model(tiny_data, trained_run, tmp_path):
    out = tmp_path / "lora"
    stage = FinetuneStage(config(tiny_data, trained_run, out, use_lora=True, lora_r=4,
                                 epochs=1, lr=1e-2), log=lambda *_: None)
    stage.setup()
    trainable = {n for n, p in stage.model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    before = {n: p.clone() for n, p in stage.model.named_parameters()}
    stage.run_epoch(0)
    for n, p in stage.model.named_parameters():
        if "lora_B" in n:
            assert not torch.equal(before[n], p), n  # B starts at zero, so it must have moved
        elif n not in trainable:
            assert torch.equal(before[n], p), n
    stage.train()
    stage.cleanup()
    best = load_checkpoint(out / "best")  # strict load: a plain ETEGRecModel, no lora keys
    names = [n for n, _ in best["model"].named_parameters()]
    assert not any("lora" in n for n in names)
    pre = load_checkpoint(trained_run / "best")["model"].state_dict()
    merged = best["model"].state_dict()
    changed = [k for k in pre if not torch.equal(pre[k], merged[k])]
    assert changed and all(k.endswith((".q.weight", ".k.weight", ".v.weight", ".o.weight"))
                           for k in changed)


def test_recommend_cli(tiny_data, trained_run, capsys):
    from etegrl.recommend import main

    data = str(tiny_data / "data")
    base = ["--checkpoint", str(trained_run / "best"), "--data-dir", data, "--json"]
    assert main(base + ["--history", "4", "11", "18", "--k", "5"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["rank"] for r in rows] == [1, 2, 3, 4, 5]
    assert len({r["item"] for r in rows}) == 5
    assert all(a["score"] >= b["score"] for a, b in zip(rows, rows[1:]))
    assert main(base + ["--user", "u3", "--k", "3", "--exclude-history"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    history = {str((3 * 7 + 3 * k) % 30 + 1) for k in range(9)}  # user u3 of the fixture
    assert len(rows) == 3 and not {r["token"] for r in rows} & history
    assert main(base + ["--history", "4", "99"]) == 2
    assert "history item '99' is neither an item token" in capsys.readouterr().err
    assert main(base + ["--user", "nobody"]) == 2
    assert "user 'nobody' is not in" in capsys.readouterr().err


def test_bf16_auto_is_on_only_where_bf16_is_native(tiny_data, trained_run, tmp_path, monkeypatch):
    from etegrl import distributed
    from etegrl.config import ConfigError, parse_args

    cpu = torch.device("cpu")
    for native in (False, True):
        monkeypatch.setattr(distributed, "native_bf16", lambda: native)
        assert distributed.use_bf16("auto", cpu) is native
        assert distributed.use_bf16(True, cpu) is True and distributed.use_bf16(False, cpu) is False
    assert distributed.use_bf16("auto", torch.device("meta")) is False
    assert parse_args(FinetuneConfig, ["bf16=auto"]).bf16 == "auto"
    with pytest.raises(ConfigError, match="bf16"):
        parse_args(FinetuneConfig, ["bf16=sometimes"])
    # the stage's training passes follow it: fp32 where bf16 is emulated, autocast where native
    stage = FinetuneStage(config(tiny_data, trained_run, tmp_path / "ft", bf16="auto"),
                          log=lambda *_: None)
    stage.setup()
    stage.model.eval()
    hist, targets = next(iter(stage.rows.epoch()))
    with torch.no_grad():
        monkeypatch.setattr(distributed, "native_bf16", lambda: False)
        emulated = stage.batch_losses(hist, targets)["total"]
        stage.cfg.bf16 = False
        full = stage.batch_losses(hist, targets)["total"]
        stage.cfg.bf16 = "auto"
        monkeypatch.setattr(distributed, "native_bf16", lambda: True)
        native = stage.batch_losses(hist, targets)["total"]
    assert torch.equal(emulated, full) and not torch.equal(native, full)
    stage.cleanup()


def test_bf16_autocast_trains_fp32_weights_on_close_losses(tiny_data, trained_run, tmp_path):
    stage = FinetuneStage(config(tiny_data, trained_run, tmp_path / "ft", bf16=True),
                          log=lambda *_: None)
    stage.setup()
    stage.model.eval()  # no dropout: the two precisions see the same network
    hist, targets = next(iter(stage.rows.epoch()))
    with torch.no_grad():
        mixed = stage.batch_losses(hist, targets)["total"]
        stage.cfg.bf16 = False
        full = stage.batch_losses(hist, targets)["total"]
        stage.cfg.bf16 = True
    assert mixed.dtype == torch.float32 and not torch.equal(mixed, full)  # autocast did act
    torch.testing.assert_close(mixed, full, rtol=2e-2, atol=0)
    before = {k: v.clone() for k, v in stage.model.state_dict().items()}
    stage.run_epoch(0)
    assert all(p.dtype == torch.float32 for p in stage.model.parameters())
    assert not torch.equal(before["encoder.block.0.layer.0.SelfAttention.q.weight"],
                           stage.model.state_dict()["encoder.block.0.layer.0.SelfAttention.q.weight"])
    stage.cleanup()


def test_trackers_get_the_logged_scalars(tiny_data, trained_run, tmp_path):
    pytest.importorskip("tensorboard", reason="the tensorboard package (test extra) is not installed")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "ft"
    assert main([f"data_dir={tiny_data / 'data'}", f"checkpoint={trained_run / 'best'}",
                 f"output_dir={out}", "max_len=8", "epochs=2", "batch_size=16", "progress=false",
                 "report_to=[tensorboard]", "run_name=tiny-ft"]) == 0
    runs = list((out / "trackers" / "tiny-ft").glob("events.out.tfevents.*"))
    assert runs, list((out / "trackers").rglob("*"))
    events = EventAccumulator(str(out / "trackers" / "tiny-ft"))
    events.Reload()
    logged = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    steps = [r for r in logged if "step" in r]
    code = [(e.step, e.value) for e in events.Scalars("code")]
    assert [s for s, _ in code] == [r["step"] for r in steps]
    assert [v for _, v in code] == pytest.approx([r["code"] for r in steps], rel=1e-6)
    valid = [r for r in logged if "valid" in r]
    assert [e.value for e in events.Scalars("valid/ndcg@10")] == pytest.approx(
        [r["valid"]["ndcg@10"] for r in valid], rel=1e-6)
    test = json.loads((out / "results.json").read_text())["test"]
    assert events.Scalars("test/recall@10")[-1].value == pytest.approx(test["recall@10"], rel=1e-6)


def test_finetune_step_options(tiny_data, trained_run, tmp_path):
    """trl's step names in finetune: max_steps ends within an epoch and sets the schedule's
    length, eval_steps validates by steps, logging_steps writes window means."""
    out = tmp_path / "ft"
    assert main([f"data_dir={tiny_data / 'data'}", f"checkpoint={trained_run / 'best'}",
                 f"output_dir={out}", "max_len=8", "epochs=5", "batch_size=8", "max_steps=5",
                 "eval_steps=2", "logging_steps=2", "progress=false"]) == 0
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    steps = [r for r in log if "step" in r]
    assert [r["step"] for r in steps] == [2, 4, 5]
    assert [r["after_step"] for r in log if "valid" in r] == [2, 4, 5]
    results = json.loads((out / "results.json").read_text())
    assert results["steps"] == 5 and results["best_step"] in (2, 4, 5)
    per_step = [r["code"] for r in steps]  # means of the window: finite losses
    assert all(0 < v < 10 for v in per_step)
    stage = FinetuneStage(FinetuneConfig(data_dir=str(tiny_data / "data"),
                                         checkpoint=str(trained_run / "best"),
                                         output_dir=str(tmp_path / "s"), max_len=8, epochs=5,
                                         batch_size=8, max_steps=7), log=lambda *_: None)
    stage.setup()
    assert stage.sched.lr_lambdas[0](7) == 0.0  # the cosine schedule ends at max_steps
    assert stage.planned_epochs() == 1 and stage.rows.batches_per_epoch() > 7
    stage.cleanup()
    with pytest.raises(ValueError, match="both set when to validate"):
        FinetuneConfig(eval_steps=3, eval_every=2)


def test_select_last_keeps_the_final_weights(tiny_data, trained_run, tmp_path):
    out = tmp_path / "last"
    assert main([f"data_dir={tiny_data / 'data'}", f"checkpoint={trained_run / 'best'}",
                 f"output_dir={out}", "max_len=8", "epochs=3", "batch_size=16", "select=last",
                 "lr=5e-2", "save_state_every=0", "progress=false"]) == 0
    results = json.loads((out / "results.json").read_text())
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    valid = [r["valid"]["ndcg@10"] for r in log if "valid" in r]
    assert len(valid) == 3 and results["best_epoch"] == 2
    assert results["valid"]["ndcg@10"] == valid[-1]  # the last validation's, best or not
    stage = FinetuneStage(FinetuneConfig(data_dir=str(tiny_data / "data"),
                                         checkpoint=str(trained_run / "best"),
                                         output_dir=str(tmp_path / "hand"), max_len=8, epochs=3,
                                         batch_size=16, lr=5e-2,
                                         save_state_every=0), log=lambda *_: None)
    stage.setup()
    for epoch in range(3):  # the same run by hand, to its final weights
        stage.run_epoch(epoch)
    final = {k: v for k, v in stage.model.state_dict().items()}
    kept = load_checkpoint(out / "best")["model"].state_dict()
    assert all(torch.equal(final[k], kept[k]) for k in final)


def test_gradient_accumulation_equals_one_big_batch(tiny_data, trained_run, tmp_path):
    """batch_size 16 × 4 accumulated forward passes = one optimiser step over 64 rows: the
    same weights as batch_size 64 after an epoch (dropout off), and as many steps."""
    weights, steps = [], []
    for name, kw in (("big", dict(batch_size=64)),
                     ("acc", dict(batch_size=16, gradient_accumulation_steps=4))):
        stage = FinetuneStage(config(tiny_data, trained_run, tmp_path / name, dropout_rate=0.0,
                                     epochs=1, **kw), log=lambda *_: None)
        stage.setup()
        stage.run_epoch(0)
        weights.append({k: v.clone() for k, v in stage.model.state_dict().items()})
        steps.append(stage.step)
        stage.cleanup()
    assert steps[0] == steps[1] > 1
    for k, v in weights[0].items():
        torch.testing.assert_close(weights[1][k], v, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="gradient_accumulation_steps"):
        FinetuneConfig(gradient_accumulation_steps=0)
