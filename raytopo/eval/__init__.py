"""Evaluation: topology metrics, plots, image-quality metrics."""
