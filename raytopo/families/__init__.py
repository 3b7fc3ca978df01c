"""Model families: each plugs into the same trainer, sampler, tuner and evaluation (docs/architecture.md, section 2)."""
