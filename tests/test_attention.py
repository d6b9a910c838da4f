"""The CPU dropout: its distribution, its gradient, and the attention path it takes."""

import pytest
import torch
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from etegrl import attention, fast_dropout
from etegrl.model import ETEGRecConfig, ETEGRecModel


def test_keep_mask_rate_and_seed():
    for p in (0.1, 0.3, 0.5):
        torch.manual_seed(0)
        keep = fast_dropout.keep_mask(torch.Size([1000, 1001]), p, torch.device("cpu"))
        assert keep.dtype == torch.bool and keep.shape == (1000, 1001)
        assert abs(keep.float().mean().item() - (1 - p)) < 3e-3
        # no pattern along either axis: every row and column keeps about 1 - p
        assert keep.float().mean(1).sub(1 - p).abs().max() < 0.06
        assert keep.float().mean(0).sub(1 - p).abs().max() < 0.06
        torch.manual_seed(0)
        assert torch.equal(keep, fast_dropout.keep_mask(keep.shape, p, keep.device))


def test_drop_scales_kept_values_and_masks_the_gradient():
    torch.manual_seed(1)
    x = torch.randn(64, 333, requires_grad=True)
    y = fast_dropout.drop(x, 0.25)
    kept = y != 0
    assert 0.7 < kept.float().mean() < 0.8
    torch.testing.assert_close(y[kept], x[kept] / 0.75)
    y.sum().backward()
    torch.testing.assert_close(x.grad, kept.float() / 0.75)
    assert fast_dropout.drop(x, 0.25, training=False) is x
    assert fast_dropout.drop(x, 0.0) is x


def test_manual_attention_path_equals_sdpa():
    """With a drop probability below 1/65536 nothing is dropped, so the CPU path (scores,
    position bias, padding or causal mask, softmax) must give SDPA's numbers."""
    torch.manual_seed(2)
    b, h, q_len, k_len, d = 3, 4, 7, 7, 16
    q, k, v = (torch.randn(b, h, n, d) for n in (q_len, k_len, k_len))
    bias = torch.randn(1, h, q_len, k_len)
    padding = torch.ones(b, 1, 1, k_len, dtype=torch.bool)
    padding[0, ..., :3] = False

    class Module:
        is_causal = False

    for mask, causal in ((padding, False), (None, True)):
        Module.is_causal = causal
        ours, _ = attention.attention(Module, q, k, v, mask, dropout=1e-9, scaling=1.0,
                                         position_bias=bias)
        ref, _ = sdpa_attention_forward(Module, q, k, v, mask, dropout=0.0, scaling=1.0,
                                        position_bias=bias)
        torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)


def test_model_uses_it_and_matches_eager_t5_in_eval():
    torch.manual_seed(3)
    cfg = ETEGRecConfig(d_model=32, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=2,
                        d_kv=16, semantic_dim=8, e_dim=8, code_num=16)
    model = ETEGRecModel(cfg)
    assert model.encoder.config._attn_implementation == attention.ATTENTION
    drops = [m for m in model.modules() if isinstance(m, torch.nn.Dropout)]
    assert drops and all(type(m) is fast_dropout.Dropout for m in drops)
    tokens = torch.randint(0, 16, (5, 12))
    mask = torch.ones_like(tokens)
    mask[:2, :4] = 0
    codes = torch.randint(0, 16, (5, 4))
    model.eval()
    ours = model(tokens, mask, codes)["logits"]
    for stack in (model.encoder, model.decoder):
        stack.config._attn_implementation = "eager"
    torch.testing.assert_close(ours, model(tokens, mask, codes)["logits"], rtol=1e-5, atol=1e-5)
    # in training the same seed draws the same masks
    for stack in (model.encoder, model.decoder):
        stack.config._attn_implementation = attention.ATTENTION
    model.train()
    torch.manual_seed(4)
    a = model(tokens, mask, codes)["logits"]
    torch.manual_seed(4)
    torch.testing.assert_close(a, model(tokens, mask, codes)["logits"])
    assert not torch.allclose(a, ours)


def test_shared_keys_equal_repeated_keys():
    """R query rows per key row (beams or group members reading one history's encoder keys)
    give what attention over R copies of the keys gives, with a padding mask per key row."""
    torch.manual_seed(5)
    b, r, h, q_len, k_len, d = 3, 5, 2, 2, 9, 8
    query = torch.randn(b * r, h, q_len, d)
    key, value = torch.randn(b, h, k_len, d), torch.randn(b, h, k_len, d)
    keep = torch.ones(b, k_len, dtype=torch.bool)
    keep[1, :4] = False
    bias = torch.zeros(1, h, q_len, k_len)

    class CrossAttention:
        is_causal = False

    shared, _ = attention.attention(CrossAttention, query, key, value, keep[:, None, None, :],
                                    scaling=1.0, position_bias=bias)
    repeated, _ = attention.attention(
        CrossAttention, query, key.repeat_interleave(r, 0), value.repeat_interleave(r, 0),
        keep.repeat_interleave(r, 0)[:, None, None, :], scaling=1.0, position_bias=bias)
    assert shared.shape == (b * r, q_len, h, d)
    torch.testing.assert_close(shared, repeated, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="cannot share"):
        attention.attention(CrossAttention, query[:-1], key, value, None, position_bias=bias)


def test_merged_mask_is_reused_only_for_the_same_bias_and_mask():
    """Layers of one stack pass share T5's bias and mask objects and so one merged mask; a new
    mask (another batch) or a new bias (another pass) is merged afresh."""
    torch.manual_seed(6)
    b, h, n, d = 2, 2, 5, 8
    q, k, v = (torch.randn(b, h, n, d) for _ in range(3))
    bias = torch.randn(1, h, n, n)
    mask_a = torch.ones(b, 1, 1, n, dtype=torch.bool)
    mask_b = mask_a.clone()
    mask_b[0, ..., :2] = False

    class Module:
        is_causal = False

    merged = attention._merged_mask
    first = merged(bias, mask_a, False, q, k)
    assert merged(bias, mask_a, False, q, k) is first
    other = merged(bias, mask_b, False, q, k)
    assert other is not first and not torch.equal(other, first)
    for mask in (mask_a, mask_b, mask_a):
        ours, _ = attention.attention(Module, q, k, v, mask, scaling=1.0, position_bias=bias)
        ref, _ = sdpa_attention_forward(Module, q, k, v, mask, scaling=1.0, position_bias=bias)
        torch.testing.assert_close(ours, ref)
    bias2 = bias + 1.0
    assert not torch.equal(merged(bias2, mask_a, False, q, k), first)
