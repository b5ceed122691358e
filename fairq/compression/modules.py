"""Finding the layers to quantize, matching name patterns and swapping submodules."""
from __future__ import annotations

import fnmatch
import logging
from typing import Iterable

from torch import nn

log = logging.getLogger(__name__)

_PLAIN_FORWARDS = {nn.Linear: nn.Linear.forward, nn.Conv2d: nn.Conv2d.forward}


def matches(name: str, patterns: Iterable[str]) -> bool:
    """True if ``name`` or one of its parents matches a pattern (fnmatch, e.g. ``classifier``, ``blocks.*.attn``)."""
    parts = name.split(".")
    prefixes = [".".join(parts[: i + 1]) for i in range(len(parts))]
    return any(fnmatch.fnmatchcase(p, pat) for pat in patterns for p in prefixes)


def is_quantizable(mod: nn.Module, types=(nn.Linear, nn.Conv2d)) -> bool:
    """A Conv2d/Linear (or subclass) whose forward is the plain one, so swapping it keeps the maths.

    Subclasses with their own forward (e.g. timm's ``Conv2dSame`` with run-time 'same' padding, or
    already-quantized layers) are left alone.
    """
    for base in types:
        if isinstance(mod, base):
            return type(mod).forward is _PLAIN_FORWARDS[base]
    return False


def quantizable_layers(model: nn.Module, skip: Iterable[str] = (), types=(nn.Linear, nn.Conv2d)) -> dict[str, nn.Module]:
    """``{name: module}`` of the layers to quantize, in model order, minus names matching ``skip``."""
    skip = tuple(skip)
    found, odd = {}, []
    for name, mod in model.named_modules():
        if not name or matches(name, skip):
            continue
        if is_quantizable(mod, types):
            found[name] = mod
        elif isinstance(mod, types) and not hasattr(mod, "weight_codes") and not hasattr(mod, "weight_fake_quant"):
            odd.append(f"{name} ({type(mod).__name__})")
    if odd:
        log.warning("left in full precision (custom forward): %s", ", ".join(odd))
    return found


def set_layer(model: nn.Module, name: str, new: nn.Module) -> None:
    """Replace the submodule at dotted ``name``."""
    model.set_submodule(name, new)
