"""Checkpoints: a folder with the recommender (``save_pretrained``), the tokenizer and the
item codes (safetensors) and a JSON of facts; written under a temporary name and renamed, so
a kill during a save never leaves a half-written checkpoint where a good one was."""

from __future__ import annotations

import json
import shutil
from contextlib import contextmanager
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import save_file

from .codes import CodeTable
from .errors import EtegrlError
from .files import read_tensors, unreadable
from .model import ETEGRecModel
from .tokenizer import RQVAE


class CheckpointError(EtegrlError):
    """A missing or mismatching checkpoint."""


@contextmanager
def atomic_dir(path: str | Path):
    """Write a folder as a whole: yields ``path.tmp`` to fill; on success it replaces ``path``.

    The previous folder is renamed to ``path.old`` before the new one takes its name, and
    deleted after; a kill between the two renames leaves ``path.old``, which
    ``recover_dir`` puts back. A kill while filling leaves only ``path.tmp``, cleared next time.
    """
    path = Path(path)
    tmp, old = path.with_name(path.name + ".tmp"), path.with_name(path.name + ".old")
    recover_dir(path)
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    yield tmp
    if path.exists():
        if old.exists():
            shutil.rmtree(old)
        path.rename(old)
    tmp.rename(path)
    if old.exists():
        shutil.rmtree(old)


def recover_dir(path: str | Path) -> Path:
    """Put back ``path.old`` when a kill came between the two renames of ``atomic_dir``."""
    path = Path(path)
    old = path.with_name(path.name + ".old")
    if not path.exists() and old.is_dir():
        old.rename(path)
    return path


def save_checkpoint(path: str | Path, *, model: ETEGRecModel, tokenizer: RQVAE,
                    table: CodeTable, tokenizer_args: dict, info: dict) -> None:
    with atomic_dir(path) as tmp:
        model.save_pretrained(tmp)
        save_file({k: v.detach().cpu().contiguous() for k, v in tokenizer.state_dict().items()},
                  str(tmp / "tokenizer.safetensors"))
        save_file({"codes": table.codes.cpu().contiguous()}, str(tmp / "codes.safetensors"))
        (tmp / "tokenizer_config.json").write_text(json.dumps(tokenizer_args, indent=2))
        (tmp / "info.json").write_text(json.dumps(info, indent=2))


def _read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path}: not readable JSON ({err})") from None
    if not isinstance(value, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return value


def load_checkpoint(path: str | Path, device="cpu") -> dict:
    """→ {model, tokenizer, table, tokenizer_args, info}; every state dict loads strictly."""
    path = recover_dir(path)
    need = ["config.json", "model.safetensors", "tokenizer.safetensors", "codes.safetensors",
            "tokenizer_config.json"]
    missing = [n for n in need if not (path / n).is_file()]
    if missing:
        raise CheckpointError(f"{path}: not a checkpoint (missing {', '.join(missing)})")
    try:
        model, report = ETEGRecModel.from_pretrained(path, output_loading_info=True)
    except SafetensorError as err:  # truncated or foreign weights
        raise unreadable(path / "model.safetensors", err, CheckpointError) from None
    except (OSError, ValueError) as err:  # e.g. a config.json that is not JSON
        raise CheckpointError(f"{path}: the model does not load ({err})") from None
    bad = {k: v for k, v in report.items() if k in ("missing_keys", "unexpected_keys",
                                                     "mismatched_keys") and v}
    if bad:  # transformers only warns; a checkpoint that does not match must not load
        raise CheckpointError(f"{path}: model weights do not match config.json: {bad}")
    model = model.to(device)
    args = _read_json(path / "tokenizer_config.json")
    try:
        tokenizer = RQVAE(**args)
    except TypeError as err:
        raise CheckpointError(f"{path / 'tokenizer_config.json'}: not a tokenizer config "
                              f"({err})") from None
    try:
        tokenizer.load_state_dict(read_tensors(path / "tokenizer.safetensors", CheckpointError),
                                  strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"{path / 'tokenizer.safetensors'}: does not match "
                              f"tokenizer_config.json: {err}") from None
    codes = read_tensors(path / "codes.safetensors", CheckpointError).get("codes")
    if codes is None or codes.ndim != 2:
        raise CheckpointError(f"{path / 'codes.safetensors'}: no [items + 1, code_len] 'codes'")
    table = CodeTable(codes[1:], code_num=model.config.code_num).to(device)
    info = _read_json(path / "info.json") if (path / "info.json").is_file() else {}
    return {"model": model, "tokenizer": tokenizer.to(device), "table": table,
            "tokenizer_args": args, "info": info}
