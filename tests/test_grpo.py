import pytest
import torch

from etegrl.grpo import (LOSS_TYPES, ItemBaseline, code_logprobs, exact_kl, group_advantages,
                         grpo_loss)


def reference_loss(logps, old, adv, ref, beta, eps_lo, eps_hi, loss_type, max_len):
    """trl's formula written out element by element (every completion has T tokens)."""
    n, t = logps.shape
    per_token = [[0.0] * t for _ in range(n)]
    for i in range(n):
        for j in range(t):
            ratio = float(torch.exp(logps[i, j] - old[i, j]))
            clipped = min(max(ratio, 1 - eps_lo), 1 + eps_hi)
            value = -min(ratio * float(adv[i]), clipped * float(adv[i]))
            if beta:
                d = float(ref[i, j] - logps[i, j])
                value += beta * (torch.exp(torch.tensor(d)).item() - d - 1)
            per_token[i][j] = value
    if loss_type == "grpo":
        return sum(sum(row) / t for row in per_token) / n
    if loss_type == "dr_grpo":
        return sum(map(sum, per_token)) / (n * max_len)
    return sum(map(sum, per_token)) / (n * t)  # bnpo, dapo: over all completion tokens


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
@pytest.mark.parametrize("spread", [0.05, 1.0])  # near-on-policy (unclipped) and far (clipped)
def test_grpo_loss_matches_trl_formula(loss_type, spread):
    g = torch.Generator().manual_seed(0)
    logps = -torch.rand(12, 4, generator=g) * 3
    old = logps + spread * torch.randn(12, 4, generator=g)
    ref = logps + 0.5 * torch.randn(12, 4, generator=g)
    adv = torch.randn(12, generator=g)
    loss, metrics = grpo_loss(logps, old, adv, ref_logps=ref, beta=0.04, epsilon_low=0.2,
                              epsilon_high=0.28, loss_type=loss_type, max_completion_length=4)
    expect = reference_loss(logps, old, adv, ref, 0.04, 0.2, 0.28, loss_type, 4)
    assert loss.item() == pytest.approx(expect, rel=1e-5, abs=1e-7)
    if spread == 1.0:
        assert metrics["clip_ratio"] > 0
    else:
        assert metrics["clip_ratio"] == 0


def test_on_policy_gradient_is_the_advantage_weighted_logprob_gradient():
    logps = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    loss, _ = grpo_loss(logps, logps.detach(), torch.tensor([0.5]), loss_type="grpo")
    loss.backward()
    assert logps.grad[0].tolist() == pytest.approx([-0.25, -0.25])  # −A / T per token


def test_group_advantages():
    rewards = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.3, 0.3, 0.3, 0.3]])
    adv, zero_std = group_advantages(rewards, "group")
    assert zero_std == 0.5
    assert torch.all(adv[1] == 0)  # equal rewards in a group: no signal
    std = torch.tensor([1.0, 0, 0, 0]).std()
    assert adv[0].tolist() == pytest.approx(((torch.tensor([1.0, 0, 0, 0]) - 0.25) / (std + 1e-4)).tolist())
    adv_none, _ = group_advantages(rewards, "none")
    assert adv_none[0].tolist() == pytest.approx([0.75, -0.25, -0.25, -0.25])
    with pytest.raises(ValueError, match="scale_rewards"):
        group_advantages(rewards, "median")


def test_item_baseline_by_hand():
    base = ItemBaseline(n_items=3, decay=0.5)
    adv = torch.tensor([[1.0, -1.0], [0.5, -0.5]])
    items = torch.tensor([[1, 2], [1, 3]])
    assert torch.equal(base.centre(adv, items), adv)  # every item starts at 0
    assert base.update() == pytest.approx((0.375 + 0.5 + 0.25) / 3)
    # item 1: 0.5 · 0 + 0.5 · mean(1, 0.5); item 2: 0.5 · −1; item 3: 0.5 · −0.5
    assert base.mean.tolist() == pytest.approx([0.0, 0.375, -0.5, -0.25])
    # a missing member (item 0) keeps its advantage; items not in the step keep their means
    out = base.centre(torch.tensor([[1.0, 2.0]]), torch.tensor([[1, 0]]))
    assert out[0].tolist() == pytest.approx([0.625, 2.0])
    base.update()
    assert base.mean.tolist() == pytest.approx([0.0, 0.6875, -0.5, -0.25])
    # processes: sums and counts are added over them before the means move
    twin = ItemBaseline(n_items=3, decay=0.5)
    twin.centre(adv, items)
    twin.update(all_sum=lambda t: 2 * t)  # two processes with the same groups
    assert twin.mean.tolist() == pytest.approx([0.0, 0.375, -0.5, -0.25])
    restored = ItemBaseline(n_items=3, decay=0.5)
    restored.load_state_dict(base.state_dict())
    assert torch.equal(restored.mean, base.mean)
    with pytest.raises(ValueError, match="decay"):
        ItemBaseline(n_items=3, decay=1.0)


def test_logprobs_and_exact_kl():
    logits = torch.tensor([[[2.0, 0.0, 0.0]]])
    codes = torch.tensor([[0]])
    assert code_logprobs(logits, codes).item() == pytest.approx(2 - torch.logsumexp(logits, -1).item())
    allowed = torch.tensor([[[True, True, False]]])
    assert code_logprobs(logits, codes, allowed).item() == pytest.approx(
        2 - torch.log(torch.exp(torch.tensor(2.0)) + 1).item())
    p = torch.softmax(logits, -1)
    q_logits = torch.zeros_like(logits)
    expect = (p * (p.log() - torch.log_softmax(q_logits, -1))).sum().item()
    assert exact_kl(logits, q_logits).item() == pytest.approx(expect)
    assert exact_kl(logits, logits).item() == pytest.approx(0.0, abs=1e-7)
    assert exact_kl(logits, q_logits, allowed).item() >= 0


def test_logprobs_equal_trls_selective_log_softmax():
    from trl.trainer.utils import selective_log_softmax

    torch.manual_seed(0)
    logits, codes = torch.randn(64, 4, 256) * 3, torch.randint(0, 256, (64, 4))
    torch.testing.assert_close(code_logprobs(logits, codes), selective_log_softmax(logits, codes))


def test_unsupported_loss_type():
    with pytest.raises(ValueError, match="loss_type 'sapo' is not supported"):
        grpo_loss(torch.zeros(1, 4), torch.zeros(1, 4), torch.zeros(1), loss_type="sapo")


def test_group_logits_equal_decoding_each_member(trained_run):
    from etegrl.checkpoint import load_checkpoint
    from etegrl.data import pad_histories
    from etegrl.model import history_tokens

    ckpt = load_checkpoint(trained_run / "best")
    model, table = ckpt["model"].eval(), ckpt["table"]
    hist = pad_histories([[1, 2, 3], [4, 5], [6, 7, 8, 9]])
    tokens, mask = history_tokens(hist, table.codes)
    g = 5
    codes = table.codes[torch.randint(1, table.n_items + 1, (3, g))]
    fast = model.group_logits(tokens, mask, codes)
    flat = codes.reshape(-1, codes.shape[-1])
    encoded = model.encode(tokens, mask).repeat_interleave(g, 0)
    hidden, _ = model.decode(encoded, mask.repeat_interleave(g, 0), flat[:, :-1])
    slow = model.code_logits(hidden)
    assert torch.allclose(fast, slow, atol=1e-5)
    # the same gradients, the encoder's included (through the shared keys and values)
    weights = torch.randn_like(slow)
    grads = []
    for logits in (slow, fast):
        model.zero_grad()
        (logits.log_softmax(-1) * weights).sum().backward(retain_graph=True)
        grads.append({k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and any(k.startswith("encoder.") for k in grads[0])
    for k in grads[0]:
        assert torch.allclose(grads[0][k], grads[1][k], atol=1e-5, rtol=1e-4), k
