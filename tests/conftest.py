from pathlib import Path

import pytest
import torch

from etegrl.data import RawData, build_splits, save_processed
from etegrl.embeddings import save_embedding

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    """The real datasets kept beside the repository; a user's clone does not have them."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} is absent (real datasets are kept beside the repository "
                    f"only on the project's own machines)")
    return SHARED_DATA


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """40 users walking a 30-item catalogue; a random 24-d semantic embedding per item."""
    root = tmp_path_factory.mktemp("tiny")
    seqs = {f"u{u}": [str((u * 7 + 3 * k) % 30 + 1) for k in range(9)] for u in range(40)}
    data = build_splits(RawData(sequences=seqs, source="tiny"), max_len=8)
    save_processed(data, root / "data")
    g = torch.Generator().manual_seed(0)
    semantic = torch.cat([torch.zeros(1, 24), torch.randn(data.n_items, 24, generator=g)])
    save_embedding(semantic, root / "data" / "embeddings" / "semantic.safetensors")
    return root


@pytest.fixture(scope="session")
def trained_run(tiny_data):
    out = tiny_data / "run"
    from pretrain.__main__ import main

    assert main([f"data_dir={tiny_data / 'data'}", f"output_dir={out}", "d_model=32", "d_ff=64",
                 "num_layers=1", "num_decoder_layers=1", "num_heads=2", "d_kv=16", "max_len=8",
                 "code_num=8", "e_dim=8", "tok_hidden=[32]", "tokenizer_pretrain_epochs=5",
                 "epochs=4", "warmup_epochs=1", "batch_size=64", "progress=false"]) == 0
    return out
