"""Exponential moving average of model weights (improved-diffusion's ``ema_rate``)."""

from __future__ import annotations

import copy

import torch


def make_ema(model: torch.nn.Module, previous: torch.nn.Module | None = None) -> torch.nn.Module:
    """A frozen copy of ``model`` to hold the averaged weights of its trainable parameters.

    A parameter that does not require grad (frozen for this stage) is not averaged: the copy shares its tensor
    with ``model``, so a frozen autoencoder is held once. With ``previous`` (the EMA before a stage change), the
    averages of trainable parameters that keep their name and shape carry over.
    """
    ema = copy.deepcopy(model).eval()
    ema.requires_grad_(False)
    earlier = dict(previous.named_parameters()) if previous is not None else {}
    for (name, target), source in zip(ema.named_parameters(), model.parameters()):
        if not source.requires_grad:
            target.data = source.data
        elif name in earlier and earlier[name].shape == target.shape:
            target.data.copy_(earlier[name].data)
    return ema


@torch.no_grad()
def update_ema(ema: torch.nn.Module, model: torch.nn.Module, rate: float) -> None:
    """ema <- rate * ema + (1 - rate) * model, for trainable parameters and floating buffers."""
    for target, source in zip(ema.parameters(), model.parameters()):
        if source.requires_grad:
            target.lerp_(source.detach(), 1.0 - rate)
    for target, source in zip(ema.buffers(), model.buffers()):
        if target.dtype.is_floating_point:
            target.copy_(source)
