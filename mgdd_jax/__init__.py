"""mgdd-jax: fast dataset distillation with a meta generator (MGDD) in JAX/Flax."""

__version__ = "0.1.0"
