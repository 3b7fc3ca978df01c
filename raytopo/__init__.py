"""raytopo: Ray distributed training for topology-aware generative models."""

__version__ = "0.1.0"
