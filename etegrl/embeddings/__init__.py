"""Item "semantic" embeddings: the tokenizer's input.

Parts, chosen in the config (``semantic_parts``) and concatenated in the order given:
  sasrec  collaborative vectors from SASRec (``sasrec.py``)
  text    sentence-transformers embeddings of item text (``text.py``); sasrec + text is the
          "Dual SCID" input
  tags    multi-hot metadata features (genres, categories), as in the TIGER MovieLens pipeline
  file    a user-supplied ``[n_items, d]`` matrix (.npy or .safetensors), rows in item-id order
Every matrix here is ``[n_items + 1, d]`` with row 0 the padding item (zeros).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from ..errors import EtegrlError
from ..files import read_tensors

PARTS = ("sasrec", "text", "tags", "file")


class EmbeddingError(EtegrlError):
    """An embedding matrix with the wrong shape or non-finite values; names the file."""


def check_embedding(matrix: torch.Tensor, n_items: int, where: str) -> torch.Tensor:
    if matrix.ndim != 2:
        raise EmbeddingError(f"{where}: expected a 2-D [items, dim] matrix, got shape "
                             f"{tuple(matrix.shape)}")
    if matrix.shape[0] != n_items + 1:
        raise EmbeddingError(f"{where}: has {matrix.shape[0]} rows, expected {n_items + 1} "
                             f"(padding row 0 + {n_items} items)")
    bad = ~torch.isfinite(matrix).all(1)
    if bad.any():
        rows = bad.nonzero().flatten()[:5].tolist()
        raise EmbeddingError(f"{where}: NaN or infinite values in row(s) {rows} "
                             f"({int(bad.sum())} rows in all)")
    return matrix


def with_padding_row(matrix: torch.Tensor) -> torch.Tensor:
    return torch.cat([torch.zeros(1, matrix.shape[1], dtype=matrix.dtype), matrix])


def tag_features(tags: list[list[str]]) -> tuple[torch.Tensor, list[str]]:
    """Multi-hot ``[n_items + 1, n_tags]`` matrix and its tag vocabulary (sorted)."""
    vocab = sorted({t for item in tags for t in item})
    if not vocab:
        raise EmbeddingError("semantic part 'tags': the items have no tags "
                             "(set tag_fields to the item file's category/genre fields)")
    index = {t: i for i, t in enumerate(vocab)}
    out = torch.zeros(len(tags) + 1, len(vocab))
    for row, item in enumerate(tags, start=1):
        for t in item:
            out[row, index[t]] = 1.0
    return out, vocab


def load_feature_file(path: str | Path, n_items: int) -> torch.Tensor:
    """A user's ``[n_items, d]`` matrix (rows in item-id order); ``[n_items + 1, d]`` with a
    padding row first is accepted too."""
    path = Path(path)
    if not path.is_file():
        raise EmbeddingError(f"feature_file: {path} not found")
    if path.suffix == ".npy":
        try:
            matrix = torch.from_numpy(np.load(path, allow_pickle=False)).float()
        except (OSError, ValueError, TypeError) as err:
            raise EmbeddingError(f"{path}: not a readable .npy matrix ({err})") from None
    elif path.suffix == ".safetensors":
        tensors = read_tensors(path, EmbeddingError)
        if len(tensors) != 1 and "embedding" not in tensors:
            raise EmbeddingError(f"{path}: holds {sorted(tensors)}; name the matrix 'embedding'")
        matrix = tensors.get("embedding", next(iter(tensors.values()))).float()
    else:
        raise EmbeddingError(f"{path}: feature files must be .npy or .safetensors")
    if matrix.ndim == 2 and matrix.shape[0] == n_items:
        matrix = with_padding_row(matrix)
    return check_embedding(matrix, n_items, str(path))


def save_embedding(matrix: torch.Tensor, path: str | Path, **metadata: str) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_file({"embedding": matrix.contiguous().float()}, str(path),
              metadata={k: str(v) for k, v in metadata.items()})


def load_embedding(path: str | Path, n_items: int | None = None) -> torch.Tensor:
    path = Path(path)
    if not path.is_file():
        raise EmbeddingError(f"{path}: embedding file not found (run the prepare step)")
    matrix = read_tensors(path, EmbeddingError).get("embedding")
    if matrix is None:
        raise EmbeddingError(f"{path}: holds no tensor named 'embedding'")
    if n_items is not None:
        check_embedding(matrix, n_items, str(path))
    return matrix


def concat_parts(parts: dict[str, torch.Tensor], order: list[str], n_items: int,
                 norm: str = "none") -> torch.Tensor:
    """Concatenate the chosen parts; ``norm='l2'`` scales each item's part to unit length first
    so that no part dominates the tokenizer's reconstruction loss by scale alone."""
    pieces = []
    for name in order:
        m = check_embedding(parts[name].float(), n_items, f"semantic part '{name}'")
        if norm == "l2":
            m = torch.nn.functional.normalize(m, dim=1)
            m[0].zero_()
        pieces.append(m)
    return torch.cat(pieces, dim=1)
