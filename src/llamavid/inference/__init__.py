"""Inference helpers that need the model package (long videos from the feature cache)."""
