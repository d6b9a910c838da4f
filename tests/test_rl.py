import json

import pytest
import torch

from etegrl.checkpoint import load_checkpoint
from etegrl.generation import beam_search
from finetune.__main__ import main as finetune_main
from rl.__main__ import main as rl_main
from rl.config import RLConfig
from rl.loop import RLStage


@pytest.fixture(scope="module")
def finetuned(tiny_data, trained_run):
    out = tiny_data / "ft"
    assert finetune_main([f"data_dir={tiny_data / 'data'}", f"checkpoint={trained_run / 'best'}",
                          f"output_dir={out}", "max_len=8", "epochs=2", "batch_size=64",
                          "progress=false"]) == 0
    return out / "best"


def config(tiny_data, finetuned, out, **kw):
    values = dict(data_dir=str(tiny_data / "data"), checkpoint=str(finetuned), output_dir=str(out),
                  max_len=8, num_generations=8, per_device_train_batch_size=80, epochs=1,
                  rows_per_user=2, learning_rate=1e-3, progress=False, beta=0.04,
                  reward_funcs=["hit", "ranking_penalty"], inject_target=True)
    values.update(kw)
    return RLConfig(**values)


@pytest.mark.parametrize("kw", [dict(), dict(kl_estimator="exact", logprob="trie", num_iterations=2),
                                dict(group_source="sampling", inject_target=False),
                                dict(bf16=True)])
def test_policy_changes_reference_does_not(tiny_data, finetuned, tmp_path, kw):
    stage = RLStage(config(tiny_data, finetuned, tmp_path / "rl", **kw), log=lambda *_: None)
    stage.setup()
    policy = {k: v.clone() for k, v in stage.model.named_parameters()}
    ref = {k: v.clone() for k, v in stage.ref.named_parameters()}
    stage.run_epoch(0)
    moved = [k for k, v in stage.model.named_parameters() if not torch.equal(policy[k], v)]
    assert moved  # the policy learned
    assert all(torch.equal(ref[k], v) for k, v in stage.ref.named_parameters())
    assert all(not p.requires_grad for p in stage.tokenizer.parameters())
    records = [json.loads(line) for line in (tmp_path / "rl" / "log.jsonl").read_text().splitlines()]
    step = records[-1]
    for key in ("reward", "frac_reward_zero_std", "kl", "clip_ratio", "reward/hit/mean",
                "reward/ranking_penalty/std", "group_hit_rate", "group_first_code_rate"):
        assert key in step
    if kw.get("num_iterations", 1) == 1:
        assert step["clip_ratio"] == 0.0  # one update per rollout: the ratio is exactly 1
    stage.cleanup()


def test_groups_are_distinct_valid_items(tiny_data, finetuned, tmp_path):
    stage = RLStage(config(tiny_data, finetuned, tmp_path / "g"), log=lambda *_: None)
    stage.setup()
    hist, targets = next(stage.rows.epoch())
    items, codes = stage.make_groups(hist, targets)
    assert items.shape == (len(targets), 8)
    for row, target in zip(items.tolist(), targets.tolist()):
        valid = [i for i in row if i > 0]
        assert len(set(valid)) == len(valid) and target in row  # distinct; target injected
    assert torch.equal(stage.table.items_of(codes)[items > 0], items[items > 0])
    stage.cleanup()


def test_groups_spread_over_first_codes(tiny_data, finetuned, tmp_path):
    """group_first_codes=2: each group is the beam split over the policy's 2 most likely first
    codes (4 members under each), and group_first_code_rate counts the groups holding a member
    on the true item's first code."""
    stage = RLStage(config(tiny_data, finetuned, tmp_path / "g", inject_target=False,
                           group_first_codes=2), log=lambda *_: None)
    stage.setup()
    hist, targets = next(stage.rows.epoch())
    items, codes = stage.make_groups(hist, targets)
    spread = beam_search(stage.model, stage.table, hist, beam=8, first_codes=2,
                         exclude=hist if stage.exclude else None)
    assert torch.equal(items, spread["items"])
    stage.cfg.group_first_codes = 0  # the same stage without the split, for contrast
    assert not torch.equal(stage.make_groups(hist, targets)[0], items)
    for firsts, row in zip(codes[..., 0].tolist(), items.tolist()):
        assert len({c for c, i in zip(firsts, row) if i > 0}) == 2  # members on 2 first codes
    stage.cfg.group_first_codes = 2
    ro = stage.rollout(hist, targets, graph=False)
    reach = [any(c == target_code and i > 0 for c, i in zip(firsts, row))
             for firsts, row, target_code in zip(codes[..., 0].tolist(), items.tolist(),
                                                 stage.table.codes[targets, 0].tolist())]
    assert ro.stats["group_first_code_rate"] == pytest.approx(sum(reach) / len(reach))
    stage.cleanup()


def test_group_first_codes_must_divide_the_group(tiny_data, finetuned, tmp_path):
    with pytest.raises(ValueError, match="'group_first_codes' \\(3\\) must divide"):
        config(tiny_data, finetuned, tmp_path, group_first_codes=3)
    with pytest.raises(ValueError, match="needs group_source=beam"):
        config(tiny_data, finetuned, tmp_path, group_first_codes=2, group_source="sampling")


@pytest.mark.parametrize("lora", [False, True])
def test_rl_end_to_end(tiny_data, finetuned, tmp_path, lora):
    out = tmp_path / "rl"
    args = [f"data_dir={tiny_data / 'data'}", f"checkpoint={finetuned}", f"output_dir={out}",
            "max_len=8", "num_generations=8", "per_device_train_batch_size=40", "gradient_accumulation_steps=2", "epochs=2",
            "learning_rate=1e-3", "progress=false", f"use_lora={str(lora).lower()}"]
    assert rl_main(args) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["stage"] == "rl" and results["lora"] is lora
    best = load_checkpoint(out / "best")  # strict: a plain model even with LoRA
    assert not any("lora" in n for n, _ in best["model"].named_parameters())
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert log[0]["kind"] == "start"  # the finetuned policy is validated first


def test_bad_rl_config(tiny_data, finetuned, tmp_path, capsys):
    with pytest.raises(ValueError, match=r"\(20\) must be divisible by num_generations \(8\)"):
        config(tiny_data, finetuned, tmp_path, per_device_train_batch_size=20)
    with pytest.raises(ValueError, match="reward_weights has 1 values for 2 reward_funcs"):
        config(tiny_data, finetuned, tmp_path, reward_weights=[1.0])
    args = [f"data_dir={tiny_data / 'data'}", f"checkpoint={finetuned}",
            f"output_dir={tmp_path / 'x'}", "reward_funcs=[hit,nope]"]
    assert rl_main(args) == 2  # one clear error line, no traceback

    assert "reward_funcs: 'nope' is neither a built-in" in capsys.readouterr().err


def test_item_baseline_in_the_stage(tiny_data, finetuned, tmp_path):
    """item_baseline: the second rollout of the same groups loses each item's running mean."""
    with pytest.raises(ValueError, match="key 'item_baseline' must be in"):
        config(tiny_data, finetuned, tmp_path, item_baseline=1.0)
    stage = RLStage(config(tiny_data, finetuned, tmp_path / "ib", item_baseline=0.5,
                           inject_target=False), log=lambda *_: None)
    stage.setup()
    hist, targets = next(stage.rows.epoch())
    items, _ = stage.make_groups(hist, targets)  # beam groups: the same in every rollout
    raw = stage.rollout(hist, targets, graph=False).advantages
    assert raw.abs().sum() > 0
    stage.item_baseline.update()
    flat = items.reshape(-1).tolist()
    for item in set(flat) - {0}:  # 0.5 · the item's mean advantage over the groups
        mine = [a for a, i in zip(raw.tolist(), flat) if i == item]
        assert stage.item_baseline.mean[item].item() == pytest.approx(0.5 * sum(mine) / len(mine), abs=1e-6)
    again = stage.rollout(hist, targets, graph=False).advantages
    expect = torch.where(items.reshape(-1) > 0, raw - stage.item_baseline.mean[items.reshape(-1)], raw)
    assert torch.allclose(again, expect, atol=1e-6)
    stage.item_baseline.update()  # leave no pending sums: the epoch below starts clean
    stage.run_epoch(0)
    records = [json.loads(line) for line in (tmp_path / "ib" / "log.jsonl").read_text().splitlines()]
    assert all(r["item_baseline"] > 0 for r in records if "reward" in r)
    stage.cleanup()


def test_first_step_kl_is_zero_and_ratio_is_one(tiny_data, finetuned, tmp_path):
    """Policy and reference start equal and dropout is off everywhere: the first step's KL
    must be exactly 0 (a nonzero value means some dropout, e.g. T5's attention dropout, is on)."""
    stage = RLStage(config(tiny_data, finetuned, tmp_path / "kl", kl_estimator="exact"),
                    log=lambda *_: None)
    stage.setup()
    hist, targets = next(stage.rows.epoch())
    stage.model.train()  # as a training loop leaves it
    stats = stage.step_on(hist, targets)
    assert stats["kl"] == pytest.approx(0.0, abs=1e-6)  # float noise only
    assert stats["clip_ratio"] == 0.0
    stage.cleanup()


def test_rl_clips_gradients(tiny_data, finetuned, tmp_path):
    stage = RLStage(config(tiny_data, finetuned, tmp_path / "clip", max_grad_norm=1e-4),
                    log=lambda *_: None)
    stage.setup()
    seen, real_step = [], stage.opt.step

    def step(*args, **kwargs):  # the gradients the optimiser gets, after clipping
        grads = [p.grad for g in stage.opt.param_groups for p in g["params"] if p.grad is not None]
        seen.append(torch.linalg.vector_norm(torch.stack([x.norm() for x in grads])).item())
        return real_step(*args, **kwargs)

    stage.opt.step = step
    stage.run_epoch(0)
    records = [json.loads(line) for line in (tmp_path / "clip" / "log.jsonl").read_text().splitlines()]
    logged = [r["grad_norm"] for r in records if "grad_norm" in r]
    assert seen and max(seen) <= 1e-4 * 1.0001
    assert logged and max(logged) > 1e-4  # the norm before clipping was above the limit
    stage.cleanup()


def test_trl_step_options_are_honoured(tiny_data, finetuned, tmp_path):
    """max_steps (overriding num_train_epochs), logging_steps, eval_steps and report_to do what
    trl's documentation says: 5 optimiser steps, a log record every 2 steps (and one at the
    end), validations at steps 2 and 4 and after the last, TensorBoard event files."""
    out = tmp_path / "rl"
    args = [f"data_dir={tiny_data / 'data'}", f"checkpoint={finetuned}", f"output_dir={out}",
            "max_len=8", "num_generations=4", "per_device_train_batch_size=8", "max_steps=5",
            "num_train_epochs=3", "logging_steps=2", "eval_steps=2", "report_to=[tensorboard]",
            "valid_users=30", "learning_rate=1e-3", "progress=false"]
    assert rl_main(args) == 0
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in log if "step" in r]
    valid = [r["after_step"] for r in log if "valid" in r]
    assert steps == [2, 4, 5] and valid == [0, 2, 4, 5]
    assert all(r["epoch"] == 0 for r in log if r["kind"] == "grpo")  # ended within epoch 0
    results = json.loads((out / "results.json").read_text())
    assert results["steps"] == 5 and results["best_step"] in (-1, 2, 4, 5)
    assert list((out / "trackers").rglob("events.out.tfevents.*"))


def test_max_steps_counts_optimiser_steps(tiny_data, finetuned, tmp_path):
    stage = RLStage(config(tiny_data, finetuned, tmp_path / "m", max_steps=3, num_iterations=2),
                    log=lambda *_: None)
    stage.setup()
    assert stage.planned_epochs() == 1 and stage.sched.lr_lambdas  # scheduled over 3 steps
    stage.run_epoch(0)
    assert stage.step == 3  # two batches: 2 + 1 iterations
    stage.cleanup()


def test_gradient_accumulation_equals_one_large_batch(tiny_data, finetuned, tmp_path):
    """Two micro-batches of 5 users accumulate the gradient of one batch of 10 users."""
    grads = []
    for n, (size, accum) in enumerate([(80, 1), (40, 2)]):
        stage = RLStage(config(tiny_data, finetuned, tmp_path / f"acc{n}",
                               per_device_train_batch_size=size,
                               gradient_accumulation_steps=accum, kl_estimator="exact"),
                        log=lambda *_: None)
        stage.setup()
        assert stage.rows.batch_size == 10  # users per optimiser step
        seen = []
        stage.opt.step = lambda *a, **k: seen.append(
            torch.cat([p.grad.flatten() for g in stage.opt.param_groups for p in g["params"]
                       if p.grad is not None]))
        hist, targets = next(stage.rows.epoch())
        stage.step_on(hist, targets)
        grads.append(seen[0])
        stage.cleanup()
    assert grads[0].abs().max() > 0
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-4, atol=1e-7)


def test_future_items_are_the_next_training_items(tiny_data):
    from etegrl.data import load_processed
    from etegrl.data import future_items

    splits = load_processed(tiny_data / "data").splits
    future = future_items(splits, 2)
    train = splits["train"]
    assert len(future) == len(train)
    seqs = dict(zip(splits["train_seq"]["user"], splits["train_seq"]["items"]))
    for row in (0, 1, len(train) - 1):
        user, target = train["user"][row], train["target"][row]
        seq = seqs[user]
        k = len(train["history"][row])  # tiny histories are never truncated
        assert seq[k] == target and future[row] == seq[k + 1:k + 3]
    last = [r for r, u in enumerate(train["user"]) if u == train["user"][0]][-1]
    assert future[last] == []  # the last training row: its later items are valid/test only


def test_rl_with_future_hit(tiny_data, finetuned, tmp_path):
    stage = RLStage(config(tiny_data, finetuned, tmp_path / "f", reward_funcs=["future_hit"],
                           future_items=3, inject_target=False, prompt_rows="random"),
                    log=lambda *_: None)
    stage.setup()
    hist, targets, rows = next(stage.rows.epoch())
    items, codes = stage.make_groups(hist, targets)
    r, _ = stage.group_rewards(hist, targets, items, codes, rows=rows)
    for u, row in enumerate(rows.tolist()):
        later = stage.future[row]
        for j, item in enumerate(items[u].tolist()):
            want = (float("nan") if item == 0 else 1.0 if item == targets[u] else
                    0.5 ** (later.index(item) + 1) if item in later else 0.0)
            assert r[u, j].item() == pytest.approx(want, nan_ok=True)
    assert (r > 0).sum() > (items == targets.unsqueeze(1)).sum()  # later items were credited
    stats = stage.step_on(hist, targets, rows)
    assert 0 < stats["reward/future_hit/mean"] <= 1
    stage.cleanup()
    with pytest.raises(ValueError, match="needs future_items"):
        config(tiny_data, finetuned, tmp_path, reward_funcs=["future_hit"])


def test_dynamic_sampling_keeps_groups_with_reward_spread(tiny_data, finetuned, tmp_path):
    from trl.trainer.utils import nanstd

    stage = RLStage(config(tiny_data, finetuned, tmp_path / "d", dynamic_sampling=True,
                           dynamic_sampling_draws=2, inject_target=False,
                           reward_funcs=["hit", "ranking_penalty"]), log=lambda *_: None)
    stage.setup()
    assert stage.rows.batch_size == 20  # 10 users a step, drawn twice over
    hist, targets = next(stage.rows.epoch())
    stage.model.eval()
    ro = stage.rollout(hist, targets)
    items, codes = stage.make_groups(hist, targets)  # the same groups, as no step was taken
    r, _ = stage.group_rewards(hist, targets, items, codes)
    spread = (nanstd(r, dim=1) > 1e-8).nonzero().squeeze(1)
    users = ro.codes.shape[0]
    assert 0 < users == min(10, len(spread)) and ro.stats["kept_groups"] == users / 20
    assert torch.equal(ro.codes, codes[spread[:users]])  # the first groups with a signal
    assert ro.stats["frac_reward_zero_std"] == pytest.approx(1 - len(spread) / 20)
    assert ro.advantages.abs().reshape(users, -1).sum(1).gt(0).all()  # every kept group learns
    stats = stage.step_on(hist, targets)
    assert "kept_groups" in stats and stage.step == 1
    stage.cleanup()


@pytest.mark.parametrize("logprob", ["full", "trie"])
def test_sft_weight_adds_the_finetune_loss(tiny_data, finetuned, tmp_path, logprob):
    """sft_weight adds w × the code cross-entropy of the true items (the finetune loss, dropout
    off as in the whole rl step) to the GRPO loss of the same rollout."""
    from etegrl.losses import code_loss
    from etegrl.model import training_outputs

    stage = RLStage(config(tiny_data, finetuned, tmp_path / "sft", sft_weight=0.5,
                           logprob=logprob), log=lambda *_: None)
    stage.setup()
    stage.model.eval()
    hist, targets = next(stage.rows.epoch())
    torch.manual_seed(0)
    ro = stage.rollout(hist, targets, graph=False)
    loss, metrics = stage.rollout_loss(ro)
    with torch.no_grad():
        out, _, target_codes = training_outputs(stage.model, stage.table.codes, hist, targets)
        allowed = stage.table.allowed_along(target_codes) if logprob == "trie" else None
        expected = code_loss(out["logits"], target_codes, allowed)
    assert metrics["sft"] == pytest.approx(expected.item(), rel=1e-4)
    ro.target_codes = None  # the same rollout without the anchor
    plain, plain_metrics = stage.rollout_loss(ro)
    assert "sft" not in plain_metrics
    assert loss.item() == pytest.approx(plain.item() + 0.5 * metrics["sft"], rel=1e-4, abs=1e-6)
    stage.cleanup()


def test_sft_on_windows_needs_its_pieces(tiny_data, finetuned, tmp_path):
    with pytest.raises(ValueError, match="sft_rows=sequences needs sft_weight"):
        config(tiny_data, finetuned, tmp_path, sft_rows="sequences")
    stage = RLStage(config(tiny_data, finetuned, tmp_path / "w", sft_weight=1.0,
                           sft_rows="sequences"), log=lambda *_: None)
    with pytest.raises(ValueError, match="causal_encoder=true"):  # this start is bidirectional
        stage.setup()
    stage.cleanup()


def test_control_is_the_run_without_its_rl_term(tiny_data, finetuned, tmp_path):
    """control=true trains what a GRPO run with the same config trains when its RL term is zero
    (a constant reward: every advantage 0; beta 0): the sft anchor on the same prompts and
    steps; with the hit reward the GRPO run differs from it. It needs the anchor."""
    (tmp_path / "const.py").write_text(
        "def same(prompts, completions, *args, **kwargs):\n    return [1.0] * len(completions)\n")
    common = [f"data_dir={tiny_data / 'data'}", f"checkpoint={finetuned}", "max_len=8",
              "num_generations=8", "per_device_train_batch_size=40", "gradient_accumulation_steps=2",
              "epochs=2", "rows_per_user=2", "learning_rate=1e-3", "lr_scheduler_type=cosine",
              "sft_weight=0.5", "select=last", "progress=false", "inject_target=true"]
    runs = {"zero": ["beta=0.0", f"reward_funcs=[{tmp_path / 'const.py'}:same]"],
            "control": ["control=true", "beta=0.04"],
            "hit": ["beta=0.0", "reward_funcs=[hit]"]}
    weights = {}
    for name, extra in runs.items():
        assert rl_main(common + extra + [f"output_dir={tmp_path / name}"]) == 0
        weights[name] = load_checkpoint(tmp_path / name / "best")["model"].state_dict()
    start = load_checkpoint(finetuned)["model"].state_dict()
    assert any(not torch.equal(start[k], v) for k, v in weights["control"].items())
    # atol 1e-5: the two runs sum their gradients in different orders, and Adam turns the
    # rounding noise of near-zero gradients (e.g. the first decoder position's query, whose
    # softmax over one key ignores it) into steps of ~1e-6 on some CPUs
    for k, v in weights["zero"].items():
        torch.testing.assert_close(weights["control"][k], v, rtol=1e-4, atol=1e-5, msg=k)
    assert any((weights["hit"][k] - v).abs().max() > 1e-4 for k, v in weights["zero"].items())
    logged = [json.loads(line) for line in
              (tmp_path / "control" / "log.jsonl").read_text().splitlines()]
    steps = [r for r in logged if r.get("kind") == "grpo" and "step" in r]
    assert steps and all("sft" in r and "reward" not in r for r in steps)
    with pytest.raises(ValueError, match="control=true .* needs sft_weight"):
        config(tiny_data, finetuned, tmp_path / "bad", control=True)
    with pytest.raises(ValueError, match="dynamic_sampling"):
        config(tiny_data, finetuned, tmp_path / "bad", control=True, sft_weight=1.0,
               dynamic_sampling=True)
