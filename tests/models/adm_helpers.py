"""Helpers shared by the ADM model tests."""

import torch


def randomized(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every parameter (zero-initialised ones too) a random value, so every path reaches the output."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn(param.shape, generator=gen) * 0.2)
    return model.eval()
