"""pot-jax: Proof of Training in JAX."""

__version__ = "0.1.0"
