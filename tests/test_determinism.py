"""Same inputs, same gradients, also on several CPU threads: the gradient paths of the code
tables and the codebooks must not accumulate in thread-arrival order (indexing a tensor with a
tensor of codes does, on CPU, and made two runs of one seed drift apart)."""

import torch

from etegrl.model import ETEGRecConfig, ETEGRecModel
from etegrl.tokenizer import RQVAE


def distinct_grads(params, loss_fn, repeats: int = 12) -> int:
    seen = set()
    for _ in range(repeats):
        for p in params:
            p.grad = None
        loss_fn().backward()
        seen.add(b"".join(p.grad.numpy().tobytes() for p in params))
    return len(seen)


def test_gradients_repeat_exactly_on_two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        torch.manual_seed(0)
        model = ETEGRecModel(ETEGRecConfig(code_num=256, d_model=64, d_ff=64, num_layers=1,
                                           num_decoder_layers=1, num_heads=2, d_kv=16))
        tokens = torch.randint(0, 256, (512, 40))
        codes = torch.randint(0, 256, (512, 3))
        tables = [e.weight for e in model.code_embeddings]
        assert distinct_grads(tables, lambda: model.embed_history(tokens).pow(2).sum()) == 1
        assert distinct_grads(tables, lambda: model.decoder_inputs(codes).pow(2).sum()) == 1

        tok = RQVAE(semantic_dim=32, hidden=[64], e_dim=128)
        x = torch.randn(1024, 32)
        tok.init_codebooks(x, seed=0)
        books = list(tok.quantizer.codebooks)
        assert distinct_grads(books, lambda: tok(x)["loss"]) == 1
    finally:
        torch.set_num_threads(before)
