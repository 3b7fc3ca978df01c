"""Ray-parallel computation on CPU actors (with train/, tune/ and data/, the only code that imports ray)."""

from raytopo.parallel.pool import PersistencePool, PoolConfig, PoolFuture

__all__ = ["PersistencePool", "PoolConfig", "PoolFuture"]
