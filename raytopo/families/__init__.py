"""Model families: each plugs into the same trainer, sampler, tuner and evaluation (DESIGN.md sec. 4)."""
