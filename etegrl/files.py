"""Reading the project's binary files with one clear error when a file is damaged."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file


def read_tensors(path: str | Path, error: type[Exception]) -> dict[str, torch.Tensor]:
    """A safetensors file's tensors; a truncated or foreign file raises ``error`` naming it
    (safetensors' own message, without the traceback)."""
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise unreadable(path, err, error) from None


def unreadable(path: str | Path, err: Exception, error: type[Exception]) -> Exception:
    """The one-line error for a safetensors file that does not load."""
    return error(f"{path}: not a readable safetensors file ({err}); it may be damaged or "
                 f"partly written — produce it again")
