"""Fused GPU kernels (Triton, optional)."""
