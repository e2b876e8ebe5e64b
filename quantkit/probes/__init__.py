"""Probes: detectors (pure functions over generated text), suites (data), reference perplexity."""
