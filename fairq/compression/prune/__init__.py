"""Pruning: unstructured magnitude pruning, structured channel / attention-head pruning, and sparsity audits,
FLOPs and sparse serialization."""
