"""SASRec: collaborative item vectors for the tokenizer, and our first baseline recommender.

Trained the original way: each user's whole training sequence at once, causal self-attention,
a prediction at every position, full-softmax cross-entropy over all items with the item
embedding table tied to the output layer. (RecBole trains one row per prefix, which costs many
times more for the same information.) The model with the best validation NDCG@10 is kept.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data import Processed, length_bucketed_batches, pad_histories
from ..metrics import DEFAULT_KS, coverage, ranking_metrics, ranks_from_scores
from ..fast_dropout import use_fast_dropout


@dataclass
class SASRecConfig:
    sasrec_hidden: int = field(default=256, metadata={"help": "SASRec hidden size = item vector size."})
    sasrec_layers: int = field(default=2, metadata={"help": "Self-attention blocks."})
    sasrec_heads: int = field(default=2, metadata={"help": "Attention heads."})
    sasrec_dropout: float = field(default=0.3, metadata={"help": "Dropout on embeddings and blocks."})
    sasrec_lr: float = field(default=1e-3, metadata={"help": "Adam learning rate."})
    sasrec_weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay."})
    sasrec_batch_size: int = field(default=128, metadata={"help": "Users (whole sequences) per step."})
    sasrec_epochs: int = field(default=200, metadata={"help": "Maximum epochs (0 = do not train SASRec)."})
    sasrec_patience: int = field(default=10, metadata={"help": "Stop after this many evaluations without a better validation NDCG@10."})
    sasrec_eval_batch_size: int = field(default=512, metadata={"help": "Users per evaluation batch."})
    sasrec_bf16: bool = field(default=False, metadata={"help": "Training forward passes under bf16 autocast (weights, optimiser, loss and evaluation stay fp32); pays on GPUs and CPUs with native bf16."})


class SASRec(nn.Module):
    def __init__(self, n_items: int, *, hidden: int = 256, layers: int = 2, heads: int = 2,
                 dropout: float = 0.3, max_len: int = 50):
        super().__init__()
        self.item_emb = nn.Embedding(n_items + 1, hidden, padding_idx=0)
        self.pos_emb = nn.Embedding(max_len, hidden)
        self.drop = nn.Dropout(dropout)
        block = nn.TransformerEncoderLayer(hidden, heads, dim_feedforward=hidden, dropout=dropout,
                                           activation="gelu", batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(block, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(hidden)
        self.max_len = max_len
        use_fast_dropout(self)  # the cheap CPU dropout masks (etegrl.fast_dropout)
        nn.init.normal_(self.item_emb.weight, std=0.02)
        nn.init.normal_(self.pos_emb.weight, std=0.02)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        """Right-padded item ids ``[B, L]`` → hidden states ``[B, L, d]``."""
        seq = seq[:, -self.max_len:]
        length = seq.shape[1]
        pos = torch.arange(length, device=seq.device)
        x = self.item_emb(seq) * self.item_emb.embedding_dim ** 0.5 + self.pos_emb(pos)
        x = self.drop(x) * (seq > 0).unsqueeze(-1)
        causal = torch.ones(length, length, dtype=torch.bool, device=seq.device).triu(1)
        x = self.blocks(x, mask=causal, src_key_padding_mask=seq == 0, is_causal=True)
        return self.norm(x)

    def item_scores(self, hidden: torch.Tensor) -> torch.Tensor:
        """Scores of items 1..N (the padding row is not an item)."""
        return hidden @ self.item_emb.weight[1:].T

    def item_vectors(self) -> torch.Tensor:
        """``[N+1, d]`` item embedding matrix, row 0 (padding) zero."""
        w = self.item_emb.weight.detach().clone()
        w[0].zero_()
        return w


def training_windows(sequences: list[list[int]], max_len: int) -> list[list[int]]:
    """Cut each training sequence into windows of ``max_len + 1`` items (``max_len`` inputs and
    their next items), from the end backwards, so every training item is a target once while
    no input is longer than ``max_len``. Consecutive windows overlap by one item."""
    windows = []
    for seq in sequences:
        end = len(seq)
        while end >= 2:
            windows.append(seq[max(0, end - max_len - 1):end])
            end -= max_len
    return windows


def _last_hidden(model: SASRec, histories: list[list[int]], device) -> torch.Tensor:
    seq = pad_histories([h[-model.max_len:] for h in histories]).to(device)
    hidden = model(seq)
    last = (seq > 0).sum(1).clamp(min=1) - 1
    return hidden[torch.arange(len(histories), device=device), last]


@torch.no_grad()
def evaluate_sasrec(model: SASRec, split, *, batch_size: int = 512, device="cpu",
                    ks=DEFAULT_KS, n_items: int | None = None,
                    exclude_history: bool = False, return_lists: bool = False):
    """Full ranking over all items (``exclude_history``: all but the user's history items);
    Recall@K, NDCG@K and coverage of the top-10 lists; ``return_lists``: also the top-20 item
    ids of every row of the split, in its order → (metrics, lists)."""
    model.eval()
    histories, all_targets = split["history"], split["target"]
    order = np.argsort([len(h) for h in histories], kind="stable")  # little padding per batch
    ranks, tops = [], []
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        scores = model.item_scores(_last_hidden(model, [histories[i] for i in rows], device))
        if exclude_history:  # item ids 1..N are score columns 0..N-1; padding 0 drops out
            seen = pad_histories([histories[i] for i in rows]).to(scores.device)
            scores = torch.cat([scores.new_zeros(len(rows), 1), scores], 1)
            scores = scores.scatter(1, seen, float("-inf"))[:, 1:]
        targets = torch.as_tensor([all_targets[i] for i in rows], device=device)
        ranks.append(ranks_from_scores(scores, targets).cpu())
        tops.append(scores.topk(min(20, scores.shape[1]), dim=1).indices.cpu() + 1)
    out = ranking_metrics(torch.cat(ranks), ks)
    top = torch.cat(tops)[torch.as_tensor(np.argsort(order, kind="stable"))]  # split order
    out["coverage@10"] = coverage(top[:, :10], n_items or model.item_emb.num_embeddings - 1)
    out["distinct_top1"] = int(torch.unique(top[:, 0]).numel())
    return (out, top) if return_lists else out


def train_sasrec(data: Processed, cfg: SASRecConfig, *, max_len: int, seed: int = 42,
                 device: str | torch.device = "cpu", log=print,
                 exclude: bool = False) -> tuple[SASRec, dict]:
    """Train on the training sequences, select by validation NDCG@10, evaluate on test
    (``exclude``: history items are not ranked)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    train_seqs = training_windows(data.splits["train_seq"]["items"], max_len)
    lengths = [len(w) for w in train_seqs]
    model = SASRec(data.n_items, hidden=cfg.sasrec_hidden, layers=cfg.sasrec_layers,
                   heads=cfg.sasrec_heads, dropout=cfg.sasrec_dropout, max_len=max_len).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.sasrec_lr,
                            weight_decay=cfg.sasrec_weight_decay)
    best = {"ndcg@10": -1.0}
    best_state, best_epoch, bad, history = None, -1, 0, []
    start = time.perf_counter()
    for epoch in range(cfg.sasrec_epochs):
        model.train()
        total, steps = 0.0, 0
        for rows in length_bucketed_batches(lengths, cfg.sasrec_batch_size, rng):
            batch = pad_histories([train_seqs[j] for j in rows]).to(device)
            inputs, labels = batch[:, :-1], batch[:, 1:]
            with torch.autocast(torch.device(device).type, dtype=torch.bfloat16,
                                enabled=cfg.sasrec_bf16):
                logits = model.item_scores(model(inputs)).float()
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                   (labels - 1).reshape(-1), ignore_index=-1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total, steps = total + loss.item(), steps + 1
        valid = evaluate_sasrec(model, data.splits["valid"], batch_size=cfg.sasrec_eval_batch_size,
                                device=device, n_items=data.n_items, exclude_history=exclude)
        history.append({"epoch": epoch, "loss": total / max(1, steps), **valid})
        log(f"sasrec epoch {epoch:3d} loss {total / max(1, steps):.4f} "
            f"valid recall@10 {valid['recall@10']:.4f} ndcg@10 {valid['ndcg@10']:.4f}")
        if valid["ndcg@10"] > best["ndcg@10"]:
            best, best_epoch, bad = valid, epoch, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            bad += 1
            if bad >= cfg.sasrec_patience:
                break
    train_time = time.perf_counter() - start
    if best_state is not None:
        model.load_state_dict(best_state)
    test, test_lists = evaluate_sasrec(
        model, data.splits["test"], batch_size=cfg.sasrec_eval_batch_size, device=device,
        n_items=data.n_items, exclude_history=exclude, return_lists=True)
    report = {"best_epoch": best_epoch, "epochs_run": len(history), "train_seconds": train_time,
              "valid": best, "test": test, "history": history,
              "loss": "full-softmax cross-entropy over all items", "exclude_history": exclude,
              "test_lists": test_lists.tolist()}
    return model, report
