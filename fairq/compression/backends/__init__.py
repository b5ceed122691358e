"""Real low-bit kernels: INT8 through torchao PT2E / oneDNN and packed INT4 weights."""
