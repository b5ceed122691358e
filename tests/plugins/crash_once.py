"""A method whose worker process dies the first time it runs (after its work, before the cell is stored): used to
check that a killed Ray task is retried and leaves every cell stored exactly once."""
import dataclasses
import os
from pathlib import Path

from fairq.compression import MethodResult, register_method
from fairq.compression.core.config import MethodConfig


@dataclasses.dataclass
class CrashOnceConfig(MethodConfig):
    weight_bits: int = 8
    marker: str = ""  # a file path: absent → create it and die; present → finish normally


def _handle(model, config: CrashOnceConfig, inputs) -> MethodResult:
    marker = Path(config.marker)
    if config.marker and not marker.exists():
        marker.write_text(str(os.getpid()))
        os._exit(3)  # the process dies mid-cell, like a killed worker
    return MethodResult(model, weight_bits=32, act_bits=32, backend="fp32")


register_method("_crash_once", CrashOnceConfig, _handle, family="test")
