"""The RQ-VAE item tokenizer: semantic embedding → latent → residual codes → reconstruction.

MLP encoder (semantic_dim → hidden... → e_dim), ``levels`` residual codebooks of ``code_num``
vectors (k-means initialised on the items), MLP decoder mirrored. Loss = MSE reconstruction +
mean over levels of (codebook + β · commitment). ``code_logits`` gives each level's distribution
over codes for a latent, used by ETEGRec's SIA loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


def mlp(sizes: list[int], dropout: float = 0.0) -> nn.Sequential:
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers += [nn.ReLU(), nn.Dropout(dropout)]
    return nn.Sequential(*layers)


def kmeans(x: torch.Tensor, k: int, iters: int = 25, generator=None) -> torch.Tensor:
    """Plain Lloyd's k-means, vectorised; empty clusters are re-seeded with random points."""
    n = x.shape[0]
    idx = torch.randperm(n, generator=generator)[:k] if n >= k else torch.randint(
        n, (k,), generator=generator)
    centers = x[idx].clone()
    for _ in range(iters):
        assign = torch.cdist(x, centers).argmin(1)
        sums = torch.zeros_like(centers).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=k).unsqueeze(1)
        empty = counts.squeeze(1) == 0
        centers = torch.where(empty.unsqueeze(1), centers, sums / counts.clamp(min=1))
        if empty.any():
            centers[empty] = x[torch.randint(n, (int(empty.sum()),), generator=generator)]
    return centers


@dataclass
class QuantizeOutput:
    quantized: torch.Tensor      # [B, e_dim] sum over levels, straight-through
    codes: torch.Tensor          # [B, levels]
    distances: torch.Tensor      # [B, levels, code_num] squared distances of each residual
    loss: torch.Tensor           # mean over levels of codebook + beta * commitment


class ResidualQuantizer(nn.Module):
    def __init__(self, *, levels: int, code_num: int, e_dim: int, beta: float = 0.25,
                 mode: str = "argmin", gumbel_tau: float = 1.0):
        super().__init__()
        self.codebooks = nn.ParameterList(
            [nn.Parameter(torch.randn(code_num, e_dim) * 0.02) for _ in range(levels)])
        self.beta, self.mode, self.gumbel_tau = beta, mode, gumbel_tau
        self.register_buffer("initialized", torch.tensor(False))

    @torch.no_grad()
    def init_kmeans(self, z: torch.Tensor, iters: int = 25, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        residual = z.detach().float().cpu()
        for book in self.codebooks:
            centers = kmeans(residual, book.shape[0], iters, g)
            book.data.copy_(centers.to(book.device))
            residual = residual - centers[torch.cdist(residual, centers).argmin(1)]
        self.initialized.fill_(True)

    def forward(self, z: torch.Tensor) -> QuantizeOutput:
        residual, total = z, torch.zeros_like(z)
        codes, dists, losses = [], [], []
        for book in self.codebooks:
            d = (residual.pow(2).sum(1, keepdim=True) - 2 * residual @ book.T
                 + book.pow(2).sum(1).unsqueeze(0))
            if self.mode == "gumbel" and self.training:
                onehot = F.gumbel_softmax(-d, tau=self.gumbel_tau, hard=True)
                code, q = onehot.argmax(1), onehot @ book
            else:
                code = d.argmin(1)
                # not book[code]: that backward accumulates with atomics on a multi-threaded
                # CPU (runs of one seed drifted apart); embedding's backward is deterministic
                q = F.embedding(code, book)
            losses.append(F.mse_loss(q, residual.detach()) + self.beta * F.mse_loss(q.detach(), residual))
            q_st = residual + (q - residual).detach()  # straight-through estimator
            total = total + q_st
            residual = residual - q_st
            codes.append(code)
            dists.append(d)
        return QuantizeOutput(total, torch.stack(codes, 1), torch.stack(dists, 1),
                              torch.stack(losses).mean())


class RQVAE(nn.Module):
    def __init__(self, *, semantic_dim: int, hidden: list[int] = (512, 256), e_dim: int = 128,
                 levels: int = 3, code_num: int = 256, beta: float = 0.25, dropout: float = 0.0,
                 quantize_mode: str = "argmin", gumbel_tau: float = 1.0,
                 logit_sign: str = "negative"):
        super().__init__()
        sizes = [semantic_dim, *hidden, e_dim]
        self.encoder = mlp(sizes, dropout)
        self.decoder = mlp(sizes[::-1], dropout)
        self.quantizer = ResidualQuantizer(levels=levels, code_num=code_num, e_dim=e_dim,
                                           beta=beta, mode=quantize_mode, gumbel_tau=gumbel_tau)
        if logit_sign not in ("negative", "positive"):
            raise ValueError("logit_sign must be 'negative' (paper) or 'positive' (official code)")
        self.logit_sign = logit_sign
        self.levels, self.code_num, self.e_dim = levels, code_num, e_dim

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        z = self.encoder(x)
        q = self.quantizer(z)
        recon = self.decoder(q.quantized)
        recon_loss = F.mse_loss(recon, x)
        return {"latent": z, "codes": q.codes, "recon": recon, "distances": q.distances,
                "recon_loss": recon_loss, "quant_loss": q.loss, "loss": recon_loss + q.loss}

    def code_logits(self, distances: torch.Tensor) -> torch.Tensor:
        """Per-level logits over codes from squared distances ``[B, levels, code_num]``.

        The paper's softmax over −distance makes near codes likely; the official ETEGRec code
        uses +distance. ``logit_sign`` chooses; the paper's convention is the default.
        """
        return -distances if self.logit_sign == "negative" else distances

    def latent_logits(self, z: torch.Tensor) -> torch.Tensor:
        """Code logits for an arbitrary latent (the SIA-projected sequence state)."""
        return self.code_logits(self.quantizer(z).distances)

    @torch.no_grad()
    def encode_items(self, x: torch.Tensor, batch_size: int = 4096):
        """Code prefixes ``[N, levels]`` of every row of ``x`` and the squared distances of the
        last level's residual to its codes ``[N, code_num]`` (eval mode, no Gumbel noise)."""
        was = self.training
        self.eval()
        outs = [self.quantizer(self.encoder(x[i:i + batch_size]))
                for i in range(0, len(x), batch_size)]
        self.train(was)
        return (torch.cat([o.codes for o in outs]),
                torch.cat([o.distances[:, -1] for o in outs]))

    def init_codebooks(self, x: torch.Tensor, seed: int = 0) -> None:
        with torch.no_grad():
            self.quantizer.init_kmeans(self.encoder(x), seed=seed)
