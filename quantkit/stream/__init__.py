"""Memory-bounded (layer-by-layer) quantization and the pre-flight that chooses it."""
