"""pot_jax.bench."""
