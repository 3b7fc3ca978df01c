"""Latent diffusion on diffusers networks: a KL autoencoder, a class-conditional UNet and a mask ControlNet."""
