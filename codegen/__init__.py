"""Triton source generation from Specs, the on-disk kernel cache and the custom ops."""
