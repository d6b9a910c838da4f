"""Our trie beam search against transformers' ``generate(num_beams=…, prefix_allowed_tokens_fn=…)``
(the way MiniOneRec constrains generation) on the same trained model and users.

    python bench/beam_search.py --checkpoint runs/ml-100k/finetune/best --data-dir runs/ml-100k/data \\
        [--users 256] [--beam 20] [--batch-size 64]

transformers' generate needs a ``…ForConditionalGeneration`` model, so the checkpoint is copied
into a ``T5ForConditionalGeneration`` with one flat vocabulary: token 0 starts the decoder (its
embedding is our BOS vector) and token 1 + t·C + c is code c at position t (its embedding and
output row are our position-t table's row c). The copy's logits outside the current position's
C codes are -inf, so generate's log-softmax is our per-position log-softmax (``logprob=full``),
and ``prefix_allowed_tokens_fn`` walks the same trie. Both therefore rank by the same scores;
the script prints the share of users whose top-10 lists are identical and the speed ratio.

It also counts our search's FLOPs (``FlopCounterMode``: matmuls and attention) and measures the
machine's fp32 matmul peak in the same run: the search's share of peak, and the speed ratio it
would reach if it ran at the peak, bound which no implementation of the same arithmetic passes.
"""

from __future__ import annotations

import sys
import time

import numpy as np
import torch
from common import matmul_peak, parser as bench_parser
from torch.utils.flop_counter import FlopCounterMode
from transformers import T5Config, T5ForConditionalGeneration

from etegrl.checkpoint import load_checkpoint
from etegrl.data import load_processed, pad_histories
from etegrl.generation import beam_search
from etegrl.model import history_tokens


class PositionMaskedT5(T5ForConditionalGeneration):
    """T5 whose logits at decoder position t keep only position t's codes."""

    code_num = 256

    def forward(self, *args, cache=None, decoder_input_ids=None, **kwargs):
        start = cache.get_seq_length() if cache is not None else 0
        out = super().forward(*args, cache=cache, decoder_input_ids=decoder_input_ids, **kwargs)
        steps = out.logits.shape[1]
        pos = torch.arange(start, start + steps, device=out.logits.device)
        vocab = torch.arange(out.logits.shape[-1], device=out.logits.device)
        keep = (vocab.unsqueeze(0) - 1) // self.code_num == pos.unsqueeze(1)  # [T, V]
        out.logits = out.logits.masked_fill(~keep.unsqueeze(0), float("-inf"))
        return out


def as_t5(model) -> PositionMaskedT5:
    cfg = model.config
    t5 = cfg.t5_config()
    flat = T5Config(**{**t5.to_dict(), "vocab_size": 1 + cfg.code_len * cfg.code_num,
                       "tie_word_embeddings": False, "scale_decoder_outputs": False,
                       "decoder_start_token_id": 0, "pad_token_id": 0, "eos_token_id": None})
    hf = PositionMaskedT5(flat).eval()
    hf.code_num = cfg.code_num
    table = torch.stack([e.weight for e in model.code_embeddings]).reshape(-1, cfg.d_model)
    with torch.no_grad():
        hf.shared.weight.copy_(torch.cat([model.bos.detach().unsqueeze(0), table]))
        # T5Config ties lm_head to the shared table whatever tie_word_embeddings says: untie
        hf.lm_head.weight = torch.nn.Parameter(torch.cat([torch.zeros(1, cfg.d_model), table]))
        hf.config.tie_word_embeddings = False
        for name in ("encoder", "decoder"):
            ours = getattr(model, name).state_dict()
            theirs = getattr(hf, name)
            missing, unexpected = theirs.load_state_dict(ours, strict=False)
            assert not unexpected and all("embed_tokens" in k for k in missing), (missing, unexpected)
    return hf


def hf_topk(hf, table, hist, beam: int) -> torch.Tensor:
    code_num, code_len = table.code_num, table.code_len
    tokens, mask = history_tokens(hist, table.codes)
    position = torch.arange(tokens.shape[1]) % code_len
    flat = 1 + position * code_num + tokens  # padding: masked, as in our encoder

    def allowed(_, ids: torch.Tensor) -> list[int]:
        codes = (ids[1:] - 1) % code_num  # drop the start token
        t = len(codes)
        valid = table.allowed(codes.unsqueeze(0))[0].nonzero().flatten()
        return (1 + t * code_num + valid).tolist()

    out = hf.generate(input_ids=flat, attention_mask=mask, num_beams=beam,
                      num_return_sequences=beam, max_new_tokens=code_len, do_sample=False,
                      length_penalty=0.0, early_stopping=True, prefix_allowed_tokens_fn=allowed)
    codes = ((out[:, 1:] - 1) % code_num).reshape(len(hist), beam, code_len)
    return table.items_of(codes)


def main(argv=None) -> int:
    parser = bench_parser(__doc__, users=256)
    parser.add_argument("--beam", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    ckpt = load_checkpoint(args.checkpoint)
    model, table = ckpt["model"].eval().requires_grad_(False), ckpt["table"]
    test = load_processed(args.data_dir).splits["test"]
    rows = np.random.default_rng(0).choice(len(test), min(args.users, len(test)), replace=False)
    hists = [test["history"][int(i)][-args.max_len:] for i in rows]
    batches = [pad_histories(hists[i:i + args.batch_size])
               for i in range(0, len(hists), args.batch_size)]
    hf = as_t5(model)
    with torch.no_grad():
        t0 = time.perf_counter()
        ours = torch.cat([beam_search(model, table, b, beam=args.beam)["items"] for b in batches])
        t_ours = time.perf_counter() - t0
        t0 = time.perf_counter()
        theirs = torch.cat([hf_topk(hf, table, b, args.beam) for b in batches])
        t_hf = time.perf_counter() - t0
        with FlopCounterMode(display=False) as counter:
            for b in batches:
                beam_search(model, table, b, beam=args.beam)
    flops, peak = counter.get_total_flops(), matmul_peak()
    same10 = (ours[:, :10] == theirs[:, :10]).all(1).float().mean().item()
    same_set = np.mean([set(a[:10]) == set(b[:10]) for a, b in zip(ours.tolist(), theirs.tolist())])
    n = len(hists)
    print(f"users {n}, beam {args.beam}, batch {args.batch_size}, threads {torch.get_num_threads()}")
    print("| search | users/s | seconds |")
    print("|---|---|---|")
    print(f"| ours (trie beam search, KV cache, encoder once) | {n / t_ours:.1f} | {t_ours:.2f} |")
    print(f"| transformers generate + prefix_allowed_tokens_fn | {n / t_hf:.1f} | {t_hf:.2f} |")
    print(f"speed ratio (generate time / ours): {t_hf / t_ours:.1f}x")
    print(f"ours: {flops / 1e9:.1f} GFLOP, {flops / t_ours / 1e9:.1f} GFLOP/s = "
          f"{flops / t_ours / peak:.0%} of this machine's fp32 matmul peak ({peak / 1e9:.1f} "
          f"GFLOP/s); at the peak the ratio would be {t_hf / (flops / peak):.1f}x")
    print(f"identical top-10 lists: {same10:.4f} of users; same top-10 sets: {same_set:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
