"""Data parallelism over processes started by ``accelerate launch --num_processes N``.

Every process holds the whole model and draws the same global batches (same seed); each trains
on its own contiguous share of every batch, and the gradients are summed across processes with
each share's loss weighted by its size, so a step equals a one-process step on the global batch.
Validation and test users are split across processes and their ranks gathered, so metrics are
those of the whole split. Only the main process writes checkpoints, states and logs.

Why not ``DistributedDataParallel`` (``accelerator.prepare(model)``): the stages call the
model's parts (encoder, decoder, SIA/PSA adapters, the tokenizer's own methods) rather than one
``forward``, and pretraining freezes and unfreezes the two networks epoch by epoch; DDP's
reducer needs every trained parameter to pass through its wrapped ``forward`` once per step.
The explicit all-reduce below is what DDP does, in one flat bucket and without overlap.
"""

from __future__ import annotations

import functools
import os

import numpy as np
import torch
from accelerate import PartialState
from accelerate.utils import broadcast, gather_object, reduce


def set_threads(threads: int = 0) -> int:
    """torch's CPU threads for this process: ``threads``, or with 0 this machine's usable cores
    divided among the processes launched on it. ``accelerate launch`` exports OMP_NUM_THREADS=1
    unless told otherwise, which alone would run a one-process CPU job on one core."""
    if threads <= 0:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        threads = max(1, (cores or 1) // max(1, local))
    torch.set_num_threads(threads)
    return threads


@functools.cache
def native_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (oneDNN's own check; False if unknown)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def use_bf16(setting, device: torch.device) -> bool:
    """A config's ``bf16`` — true, false or ``"auto"`` — on ``device``. ``auto`` is on only
    where bf16 matmuls run natively (a CUDA device with bf16, a CPU with AVX512-BF16 or AMX):
    on other CPUs they are emulated, tens of times slower than fp32."""
    if setting == "auto":
        if device.type == "cuda":
            return torch.cuda.is_bf16_supported()
        return device.type == "cpu" and native_bf16()
    return bool(setting)


def process_state() -> PartialState:
    """accelerate's process facts; gloo on CPU-only machines, where ``accelerate launch
    --multi_gpu`` starts the processes but accelerate would otherwise not join them."""
    return PartialState(cpu=not torch.accelerator.is_available())


class Processes:
    """Rank, world size and the few collective operations the stages need."""

    def __init__(self):
        self.state = process_state()
        self.rank, self.world = self.state.process_index, self.state.num_processes
        self.is_main = self.state.is_main_process
        self.device = self.state.device

    def share(self, n: int) -> slice:
        """This process's contiguous part of ``n`` rows (parts differ in size by at most 1)."""
        bounds = np.linspace(0, n, self.world + 1).round().astype(int)
        return slice(int(bounds[self.rank]), int(bounds[self.rank + 1]))

    def sync_gradients(self, params) -> None:
        """Sum the gradients of ``params`` over processes. A parameter without a gradient on
        every process keeps none (AdamW then leaves it alone, as in one process)."""
        if self.world == 1:
            return
        params = list(params)
        has = torch.tensor([p.grad is not None for p in params], dtype=torch.float32,
                           device=self.device)
        has = reduce(has, reduction="sum") > 0
        chosen = [p for p, h in zip(params, has.tolist()) if h]
        if not chosen:
            return
        flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1)
                          for p in chosen])
        flat = reduce(flat, reduction="sum")
        offset = 0
        for p in chosen:
            n = p.numel()
            p.grad = flat[offset:offset + n].view_as(p).clone()
            offset += n

    def weighted_sum(self, weight: float, values: dict) -> dict:
        """Σ over processes of ``weight × values`` (the global mean when weights are shares)."""
        if self.world == 1:
            return {k: weight * v for k, v in values.items()}
        total: dict[str, float] = {}
        for w, vals in gather_object([(weight, values)]):
            for k, v in vals.items():
                total[k] = total.get(k, 0.0) + w * v
        return total

    def gather(self, items: list) -> list:
        """The concatenation of every process's ``items``."""
        return items if self.world == 1 else gather_object(items)

    def all_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """The element-wise sum of ``tensor`` over processes."""
        return tensor if self.world == 1 else reduce(tensor.to(self.device), reduction="sum").cpu()

    def broadcast_(self, tensor: torch.Tensor) -> torch.Tensor:
        """The main process's ``tensor`` on every process."""
        return tensor if self.world == 1 else broadcast(tensor.contiguous(), from_process=0)

    def broadcast_module(self, module: torch.nn.Module) -> None:
        if self.world == 1:
            return
        with torch.no_grad():
            for t in list(module.parameters()) + list(module.buffers()):
                t.copy_(broadcast(t.detach().clone(), from_process=0))

    def barrier(self) -> None:
        if self.world > 1:
            self.state.wait_for_everyone()
