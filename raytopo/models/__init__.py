"""Networks of the model families (``adm`` here; other families add sibling subpackages).

Each diffusion network follows the denoiser convention ``model(x_t, t, **model_kwargs)``; see
``raytopo.models.adm.unet`` for the conditioning keyword arguments.
"""
