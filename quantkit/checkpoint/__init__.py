"""Checkpoint files: safetensors headers, format metadata, the quantkit.json manifest, and the
self-checks every produced checkpoint must pass."""
