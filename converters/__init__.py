"""Converters: a trained run in, a verified model bundle out (prune -> quantize -> export -> verify)."""
