"""Quantization: static / dynamic PTQ, fake-quant and observers, the per-layer-input and deployed-graph
simulations, mixed precision and its sensitivities, QAT, and the advanced PTQ methods (RTN, GPTQ, AWQ,
SmoothQuant)."""
