"""One optimisation step, family-agnostic, with persistence work overlapped by micro-batch pipelining.

The batch is split into ``microbatches`` chunks. Every chunk's forward pass runs first; a family may return
`Pending` terms whose work (TDN's persistence diagrams) starts on Ray actors at that moment. Chunks are then
resolved and backpropagated in order, so the actors computing chunk k+1 overlap chunk k's backward pass,
and chunk 1's overlap chunk 2's forward pass:

    forward 1 -> submit PH 1 | forward 2 -> submit PH 2 | wait PH 1, backward 1 | wait PH 2, backward 2

Gradients are all-reduced once per step by hand (one flattened buffer) rather than by DDP hooks, which
would fire during the first chunk's backward while the second chunk's graph is still alive.
"""

from __future__ import annotations

import math
from typing import Mapping

import torch
import torch.distributed as dist

from raytopo.families.base import StepContext, resolve_terms

Batch = Mapping[str, torch.Tensor]


def split_batch(batch: Batch, chunks: int) -> list[dict[str, torch.Tensor]]:
    """``chunks`` equal micro-batches (the batch size is checked to be divisible by the config)."""
    size = next(iter(batch.values())).shape[0]
    step = math.ceil(size / chunks)
    return [{key: value[i:i + step] for key, value in batch.items()} for i in range(0, size, step)]


def train_step(model: torch.nn.Module, family, batch: Batch, ctx: StepContext, weights: Mapping[str, float],
               optimizer: torch.optim.Optimizer, microbatches: int, grad_clip: float | None,
               precision: str = "fp32") -> dict[str, float]:
    """Forward all micro-batches, then resolve + backward each; all-reduce; clip; step. Returns metrics.

    ``precision="bf16"`` runs the forward passes under bfloat16 autocast on ``ctx.device``.
    """
    optimizer.zero_grad(set_to_none=True)
    chunks = split_batch(batch, microbatches)
    with torch.autocast(device_type=ctx.device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        pending = [family.losses(model, chunk, ctx) for chunk in chunks]
    metrics: dict[str, float] = {}
    for terms in pending:
        resolved = resolve_terms(terms)
        unknown = sorted(set(resolved) - set(weights))
        if unknown:
            raise ValueError(f"family {family.name!r}: loss term(s) {', '.join(unknown)} missing from its "
                             f"loss_weights ({', '.join(sorted(weights))}); give logged-only terms weight 0")
        loss = sum(weights[name] * value.mean() for name, value in resolved.items()) / len(chunks)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"step {ctx.step}: non-finite loss {loss.item()} (terms: {list(resolved)})")
        loss.backward()
        for name, value in resolved.items():
            metrics[name] = metrics.get(name, 0.0) + value.detach().mean().item() / len(chunks)
        metrics["loss"] = metrics.get("loss", 0.0) + loss.item()
    all_reduce_gradients(model)
    if grad_clip:
        metrics.update(clip_each_group(optimizer, grad_clip))
    optimizer.step()
    return metrics


def clip_each_group(optimizer: torch.optim.Optimizer, grad_clip: float) -> dict[str, float]:
    """Clip every parameter group to ``grad_clip`` on its own norm. Returns ``grad_norm`` (the norm before
    clipping; with several groups the norm over all of them) and, with several groups, ``grad_norm_<name>``."""
    norms = {}
    for index, group in enumerate(optimizer.param_groups):
        parameters = [p for p in group["params"] if p.grad is not None]
        if parameters:
            norms[group.get("name", str(index))] = float(torch.nn.utils.clip_grad_norm_(parameters, grad_clip))
    if len(norms) == 1:
        return {"grad_norm": next(iter(norms.values()))}
    return {"grad_norm": math.sqrt(sum(n * n for n in norms.values())),
            **{f"grad_norm_{name}": norm for name, norm in norms.items()}}


def all_reduce_gradients(model: torch.nn.Module) -> None:
    """Average gradients over the process group (no-op with one process) in one flattened buffer."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    offset = 0
    for grad in grads:
        grad.copy_(flat[offset:offset + grad.numel()].view_as(grad))
        offset += grad.numel()


def broadcast_parameters(model: torch.nn.Module) -> None:
    """Make every rank start from rank 0's weights and buffers."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    with torch.no_grad():
        for tensor in list(model.parameters()) + list(model.buffers()):
            dist.broadcast(tensor, src=0)
