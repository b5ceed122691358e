"""Phases orchestrate: build data, model and compressor, evaluate, write the store. They compute no metric."""
PHASES = ("baseline", "quantization", "mitigation", "analysis")
