"""PyTorch's own distributed engine for the pretraining loop: torchrun DDP, or FSDP2 `fully_shard`.

Single process when `WORLD_SIZE` is unset or 1 (every helper then is a no-op). Under
`torchrun --nproc_per_node N -m krllm pretrain ...` each process joins a process group — nccl on
CUDA, gloo on CPU — and:
- `ddp`: the whole model on every rank, gradients averaged by DistributedDataParallel;
- `fsdp`: parameters, gradients and optimizer state sharded with FSDP2 (`fully_shard` on each
  block, then on the root), gathered layer by layer during forward/backward.
Checkpoints are always full (unsharded) state dicts, so a run saved under FSDP resumes under DDP or
in one process, and the weights load anywhere.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass
class Dist:
    rank: int = 0
    local_rank: int = 0
    world: int = 1
    backend: str | None = None

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: torch.device) -> Dist:
    """Join the torchrun process group if there is one; pick the rank's CUDA device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=30))
    return Dist(rank=rank, local_rank=local_rank, world=world, backend=backend)


def rank_device(device: torch.device, d: Dist) -> torch.device:
    return torch.device("cuda", d.local_rank) if device.type == "cuda" and d.enabled else device


def shutdown(d: Dist) -> None:
    if d.enabled and dist.is_initialized():
        dist.destroy_process_group()


def barrier(d: Dist) -> None:
    if d.enabled:
        dist.barrier()


def all_reduce(t: torch.Tensor, d: Dist, op: str = "sum") -> torch.Tensor:
    """In-place sum / max / avg across ranks (returns `t`)."""
    if d.enabled:
        ops = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}
        if op == "avg":
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
            t /= d.world
        else:
            dist.all_reduce(t, op=ops[op])
    return t


def gather_objects(obj, d: Dist) -> list:
    """Every rank's `obj`, in rank order, on every rank."""
    if not d.enabled:
        return [obj]
    out = [None] * d.world
    dist.all_gather_object(out, obj)
    return out


def wrap(model: nn.Module, strategy: str, d: Dist, device: torch.device) -> nn.Module:
    """DDP or FSDP2 around `model` (returned as is in a single process)."""
    if not d.enabled:
        return model
    if strategy == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for block in blocks_of(model) or ():  # one shard group per block (else the whole model is one)
            fully_shard(block)
        fully_shard(model)
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [device.index] if device.type == "cuda" else None
    return DDP(model, device_ids=ids)


def blocks_of(model: nn.Module) -> "nn.ModuleList | None":
    """The repeated blocks, `model.model.layers` (krllm's Llama and transformers' LMs); None if absent."""
    layers = getattr(getattr(model, "model", None), "layers", None)
    return layers if isinstance(layers, nn.ModuleList) else None


def unwrap(model: nn.Module) -> nn.Module:
    """The Llama inside DDP (FSDP2 modifies the module in place, so there is nothing to unwrap)."""
    return model.module if hasattr(model, "module") and hasattr(model, "no_sync") else model


def grad_sync(model: nn.Module, sync: bool):
    """Context for one micro-batch: skip the gradient all-reduce unless `sync` (grad accumulation)."""
    if hasattr(model, "no_sync"):  # DDP
        return contextlib.nullcontext() if sync else model.no_sync()
    if hasattr(model, "set_requires_gradient_sync"):  # FSDP2
        model.set_requires_gradient_sync(sync)
    return contextlib.nullcontext()


def full_model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Full state dict on CPU (a collective under FSDP: every rank must call it)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(unwrap(model), options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def full_optim_state(model: nn.Module, optim: torch.optim.Optimizer) -> dict:
    """Optimizer state keyed by parameter name, unsharded, on CPU (collective under FSDP)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(unwrap(model), optim,
                                    options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_full_optim_state(model: nn.Module, optim: torch.optim.Optimizer, state: dict) -> None:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(unwrap(model), optim, state, options=StateDictOptions(full_state_dict=True))


def total_norm_value(norm: torch.Tensor) -> torch.Tensor:
    """clip_grad_norm_ returns a DTensor under FSDP2: make it a plain tensor."""
    return norm.full_tensor() if hasattr(norm, "full_tensor") else norm
