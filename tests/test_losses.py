import math

import pytest
import torch

from etegrl.losses import code_loss, psa_loss, sia_loss
from etegrl.tokenizer import ResidualQuantizer


def test_code_loss_by_hand():
    logits = torch.tensor([[[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]]])
    codes = torch.tensor([[0, 2]])
    first = math.log(math.e ** 2 + 2) - 2  # -log softmax(2 | [2, 0, 0])
    second = math.log(2 + math.e)  # -log softmax(0 | [0, 1, 0])
    assert code_loss(logits, codes).item() == pytest.approx((first + second) / 2)


def test_sia_symmetric_kl_by_hand():
    # one row, one level, two codes: p = (0.8, 0.2), q = (0.5, 0.5)
    p = torch.tensor([[[math.log(0.8), math.log(0.2)]]])
    q = torch.tensor([[[0.0, 0.0]]])
    kl_pq = 0.8 * math.log(0.8 / 0.5) + 0.2 * math.log(0.2 / 0.5)
    kl_qp = 0.5 * math.log(0.5 / 0.8) + 0.5 * math.log(0.5 / 0.2)
    assert sia_loss(p, q).item() == pytest.approx(kl_pq + kl_qp, rel=1e-5)
    assert sia_loss(p, q).item() == pytest.approx(sia_loss(q, p).item(), rel=1e-6)
    assert sia_loss(p, p).item() == pytest.approx(0.0, abs=1e-7)


def test_psa_infonce_by_hand():
    query = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    keys = torch.tensor([[3.0, 0.0], [1.0, 1.0]])
    tau = 0.5
    # cosine similarities: row 0: (1, 1/√2); row 1: (0, 1/√2)
    s = 1 / math.sqrt(2)
    row0 = -(1 / tau) + math.log(math.exp(1 / tau) + math.exp(s / tau))
    row1 = -(s / tau) + math.log(math.exp(0) + math.exp(s / tau))
    assert psa_loss(query, keys, tau=tau, both=False).item() == pytest.approx((row0 + row1) / 2, rel=1e-5)
    # the other direction: key 0 among the queries (1, 0), key 1 among them (1/√2, 1/√2)
    col0 = -(1 / tau) + math.log(math.exp(1 / tau) + math.exp(0))
    col1 = -(s / tau) + math.log(math.exp(s / tau) + math.exp(s / tau))
    both = (row0 + row1) / 2 + (col0 + col1) / 2
    assert psa_loss(query, keys, tau=tau).item() == pytest.approx(both, rel=1e-5)
    # the same target twice: the other row is no negative, so each row's loss is 0
    assert psa_loss(query, keys, torch.tensor([7, 7]), tau=tau).item() == pytest.approx(0.0, abs=1e-6)


def test_vq_loss_and_codes_by_hand():
    rq = ResidualQuantizer(levels=2, code_num=2, e_dim=2, beta=0.25)
    with torch.no_grad():
        rq.codebooks[0].copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
        rq.codebooks[1].copy_(torch.tensor([[0.1, 0.0], [0.0, -0.1]]))
    z = torch.tensor([[1.2, 0.1]])
    out = rq(z)
    # level 0 picks (1, 0), residual (0.2, 0.1); level 1 picks (0.1, 0), residual (0.1, 0.1)
    assert out.codes.tolist() == [[0, 0]]
    l0 = (0.2 ** 2 + 0.1 ** 2) / 2 * 1.25  # codebook + β·commitment, equal values forward
    l1 = (0.1 ** 2 + 0.1 ** 2) / 2 * 1.25
    assert out.loss.item() == pytest.approx((l0 + l1) / 2, rel=1e-5)
    assert out.quantized.tolist()[0] == pytest.approx([1.1, 0.0])
    assert out.distances[0, 0].tolist() == pytest.approx([0.05, 2.25])


def test_code_loss_over_valid_codes_by_hand():
    logits = torch.tensor([[[1.0, 2.0, 3.0]]])
    codes = torch.tensor([[1]])
    full = -(2.0 - math.log(math.exp(1) + math.exp(2) + math.exp(3)))
    assert code_loss(logits, codes).item() == pytest.approx(full, rel=1e-6)
    allowed = torch.tensor([[[True, True, False]]])  # code 2 is no valid continuation
    masked = -(2.0 - math.log(math.exp(1) + math.exp(2)))
    assert code_loss(logits, codes, allowed).item() == pytest.approx(masked, rel=1e-6)


def test_code_loss_with_soft_targets_by_hand():
    logits = torch.tensor([[[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]]])
    codes = torch.tensor([[0, 2]])
    soft = torch.tensor([[[0.5, 0.5, 0.0], [0.0, 0.0, 1.0]]])
    logp = torch.log_softmax(logits, -1)
    hard = -(logp[0, 0, 0] + logp[0, 1, 2]) / 2
    soft_ce = -(0.5 * logp[0, 0, 0] + 0.5 * logp[0, 0, 1] + logp[0, 1, 2]) / 2
    got = code_loss(logits, codes, soft=soft, soft_weight=0.25)
    assert got.item() == pytest.approx((0.75 * hard + 0.25 * soft_ce).item())
    # masked codes with no soft mass add nothing (no 0 · −inf); weight 0 is the plain loss
    allowed = torch.tensor([[[True, True, False], [False, True, True]]])
    assert torch.isfinite(code_loss(logits, codes, allowed, soft=soft, soft_weight=0.5))
    assert code_loss(logits, codes, soft=soft, soft_weight=0.0) == code_loss(logits, codes)
