"""One-pass training over sequence windows with a causal encoder, and the training safeguards
(gradient clipping, warm-up length, config checks)."""

import json

import pytest
import torch

from etegrl.model import ETEGRecConfig, ETEGRecModel, history_tokens, training_outputs
from etegrl.training import SequenceEpochs, clip_gradients, warmup_length
from pretrain.config import PretrainConfig
from pretrain.loop import PretrainStage

from tests.test_pretrain import tiny_config


def tiny_model(causal=True):
    torch.manual_seed(0)
    return ETEGRecModel(ETEGRecConfig(code_num=16, num_layers=2, num_decoder_layers=2, d_model=32,
                                      d_ff=64, d_kv=8, num_heads=2, semantic_dim=8, e_dim=8,
                                      causal_encoder=causal)).eval()


def test_forward_sequence_equals_one_forward_per_prefix():
    model = tiny_model()
    g = torch.Generator().manual_seed(1)
    codes = torch.randint(0, 16, (31, 4), generator=g)
    codes[0] = 0
    seqs = [[3, 5, 7, 9, 11, 2], [4, 8, 1, 0, 0, 0]]
    targets = torch.tensor([[5, 7, 9, 11, 2, 6], [8, 1, 12, 0, 0, 0]])
    tokens, mask = history_tokens(torch.tensor(seqs), codes)
    out = model.forward_sequence(tokens, mask, codes[targets])
    checked = 0
    for b, seq in enumerate(seqs):
        for t in range(len(seq)):
            if seq[t] == 0:
                continue
            tk, mk = history_tokens(torch.tensor([seq[:t + 1]]), codes)
            ref = model(tk, mk, codes[targets[b:b + 1, t]])
            for key in ("logits", "pooled", "bos_state"):
                torch.testing.assert_close(out[key][b, t], ref[key][0], atol=1e-5, rtol=1e-5)
            checked += 1
    assert checked == 9
    # the causal encoder: a later item does not change an earlier position's encoding
    later = torch.tensor([[3, 5, 7, 9, 11, 30]])
    tk1, mk1 = history_tokens(torch.tensor([seqs[0]]), codes)
    tk2, mk2 = history_tokens(later, codes)
    e1, e2 = model.encode(tk1, mk1), model.encode(tk2, mk2)
    torch.testing.assert_close(e1[:, :20], e2[:, :20])
    assert not torch.allclose(e1[:, 20:], e2[:, 20:])
    # rows of a sequence batch keep only the scored targets
    rows, kept, kept_codes = training_outputs(model, codes, torch.tensor(seqs), targets)
    assert kept.tolist() == [5, 7, 9, 11, 2, 6, 8, 1, 12]
    assert rows["logits"].shape == (9, 4, 16) and torch.equal(kept_codes, codes[kept])


def test_forward_sequence_needs_a_causal_encoder():
    model = tiny_model(causal=False)
    tokens = torch.ones(1, 8, dtype=torch.long)
    with pytest.raises(ValueError, match="causal_encoder"):
        model.forward_sequence(tokens, tokens, torch.ones(1, 2, 4, dtype=torch.long))


def brute_force_targets(seq, window, stride):
    """Every (history, target) a window scores, by the rule in SequenceEpochs' docstring."""
    out, end = [], len(seq) - 2
    while end >= 0:
        start = max(0, end + 1 - window)
        first = start if start == 0 else end - stride + 1
        out += [(tuple(seq[start:k + 1]), seq[k + 1]) for k in range(first, end + 1)]
        if start == 0:
            break
        end -= stride
    return out


@pytest.mark.parametrize("window,stride", [(4, 4), (4, 2), (5, 1), (20, 0)])
def test_sequence_windows_score_every_target_once(window, stride):
    seqs = [list(range(1, 12)), [5, 6], [7, 8, 9, 10, 11, 12, 13], [3]]
    epochs = SequenceEpochs({"items": seqs}, batch_size=3, window=window, stride=stride, seed=0)
    seen = []
    for items, targets in epochs.epoch():
        for row_items, row_targets in zip(items.tolist(), targets.tolist()):
            n = sum(1 for i in row_items if i)
            assert n <= window
            for k, t in enumerate(row_targets):
                if t:
                    assert k < n
                    seen.append((tuple(row_items[:k + 1]), t))
    # every target after a user's first item exactly once, each with the history the rule gives
    assert sorted(t for _, t in seen) == sorted(x for s in seqs for x in s[1:])
    assert sorted(seen) == sorted(p for s in seqs for p in brute_force_targets(s, window, stride or window))
    assert epochs.targets_per_epoch() == len(seen)
    # histories read by a target: at least window - stride + 1 items unless it is near the start
    s = stride or window
    for hist, _ in seen:
        assert len(hist) >= min(window - s + 1, hist[-1] - hist[0] + 1)


def test_clipping_bounds_a_huge_gradient():
    w = torch.nn.Parameter(torch.zeros(3))
    w.grad = torch.tensor([3e6, 4e6, 0.0])
    assert clip_gradients([w], 1.0) == pytest.approx(5e6)
    assert w.grad.norm().item() == pytest.approx(1.0, rel=1e-5)
    assert clip_gradients([w], 0.0) is None


def test_a_training_stage_clips_each_step(tiny_data, tmp_path):
    stage = PretrainStage(tiny_config(tiny_data, output_dir=str(tmp_path / "run"),
                                      max_grad_norm=1e-3, lr_rec=1.0, warmup_ratio=0.0,
                                      weight_decay=0.0), log=lambda *_: None)
    stage.setup()
    before = {k: v.detach().clone() for k, v in stage.model.named_parameters()}
    norms = []
    real_step = stage.opt_rec.step

    def step(*args, **kwargs):  # the gradients the optimiser gets, after clipping
        grads = [p.grad for g in stage.opt_rec.param_groups for p in g["params"] if p.grad is not None]
        norms.append(torch.linalg.vector_norm(torch.stack([x.norm() for x in grads])).item())
        return real_step(*args, **kwargs)

    stage.opt_rec.step = step
    stage.run_epoch(0)  # a warm-up epoch: the recommender on the code loss
    assert norms and max(norms) <= 1e-3 * 1.0001
    # AdamW normalises the step: with lr 1 a parameter still moves, but the logged norm is the
    # unclipped one, far above the limit
    moved = [k for k, v in stage.model.named_parameters() if not torch.equal(before[k], v)]
    assert moved
    logged = [r for r in map(json.loads, open(tmp_path / "run" / "log.jsonl")) if "grad_norm" in r]
    assert logged and all(r["grad_norm"] > 1e-3 for r in logged)
    stage.cleanup()


def test_warmup_length():
    assert warmup_length(1000, warmup_steps=8000) == 1000
    assert warmup_length(1000, warmup_steps=50, warmup_ratio=0.5) == 50
    assert warmup_length(1000, warmup_ratio=0.02) == 20


def test_cycle_and_eval_every_must_fit(tmp_path):
    base = dict(warmup_epochs=2, cycle=3)
    with pytest.raises(ValueError, match="multiple of eval_every"):
        PretrainConfig(epochs=20, eval_every=2, **base)
    with pytest.raises(ValueError, match="ends on a tokenizer epoch"):
        PretrainConfig(epochs=10, eval_every=3, **base)
    PretrainConfig(epochs=20, eval_every=3, **base)
    PretrainConfig(epochs=10, eval_every=2, mode="tiger", cycle=3)  # no tokenizer epochs
    with pytest.raises(ValueError, match="causal_encoder"):
        PretrainConfig(epochs=20, eval_every=3, train_on="sequences", **base)
