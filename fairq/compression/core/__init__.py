"""The compression contract every technique builds on: the method registry (``register_method``, ``MethodInputs``,
``MethodResult``), the config dataclasses and their validators, the ``compress`` / ``quantize`` entry points,
module helpers, size and latency measurement, and the backend tags."""
