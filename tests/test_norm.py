"""The fused RMS norm gives T5LayerNorm's values and gradients, and replaces it everywhere."""

import torch
from transformers.models.t5.modeling_t5 import T5LayerNorm

from etegrl.model import ETEGRecConfig, ETEGRecModel
from etegrl.norm import RMSNorm


def _pair(d=48):
    torch.manual_seed(0)
    ref = T5LayerNorm(d, eps=1e-6)
    with torch.no_grad():
        ref.weight.copy_(torch.randn(d))
    fused = RMSNorm(d, eps=1e-6)
    fused.load_state_dict(ref.state_dict())
    return ref, fused


def test_fused_norm_matches_t5_values_and_gradients():
    ref, fused = _pair()
    x = (torch.randn(7, 5, 48) * 3).requires_grad_()
    x2 = x.detach().clone().requires_grad_()
    y_ref, y = ref(x), fused(x2)
    torch.testing.assert_close(y, y_ref, rtol=1e-6, atol=1e-6)
    g = torch.randn_like(y)
    (y_ref * g).sum().backward()
    (y * g).sum().backward()
    torch.testing.assert_close(x2.grad, x.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fused.weight.grad, ref.weight.grad, rtol=1e-5, atol=1e-5)


def test_fused_norm_keeps_t5_dtype_rules():
    ref, fused = _pair()
    x = torch.randn(3, 48)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert fused(x).dtype == ref(x).dtype == torch.float32
        torch.testing.assert_close(fused(x), ref(x))
    xb = x.bfloat16()  # mixed dtypes take T5's own code: same promotion, same numbers
    assert fused(xb).dtype == ref(xb).dtype
    torch.testing.assert_close(fused(xb), ref(xb))


def test_model_uses_fused_norm_with_t5_state_dict_keys():
    cfg = ETEGRecConfig(d_model=32, d_ff=64, num_layers=1, num_decoder_layers=1, num_heads=2,
                        d_kv=16, code_num=8, semantic_dim=16, e_dim=8)
    model = ETEGRecModel(cfg)
    norms = [m for m in model.modules() if isinstance(m, T5LayerNorm)]
    assert norms and all(type(m) is RMSNorm for m in norms)
    assert all(torch.equal(m.weight, torch.ones_like(m.weight)) for m in norms)
    keys = set(model.state_dict())
    assert "encoder.final_layer_norm.weight" in keys
    assert "decoder.block.0.layer.0.layer_norm.weight" in keys
