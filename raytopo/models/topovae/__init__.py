"""Topo-GEN's convolutional VAE and the VAE / TopoVAE pair (``raytopo.families.topovae`` trains it)."""

from raytopo.models.topovae.vae import (
    VAE,
    VAEConfig,
    VAEOutput,
    VAEPair,
    kl_divergence,
    reconstruction_loss,
)

__all__ = ["VAE", "VAEConfig", "VAEOutput", "VAEPair", "kl_divergence", "reconstruction_loss"]
