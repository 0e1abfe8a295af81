"""Core architectures; each registers through ``register_architectures`` like any plugin's."""
