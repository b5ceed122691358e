"""Model registry: fairq's own builders first, then any timm name, then any torchvision name.

Mirrors timm's ``create_model``: users call :func:`create_model` by name and never import a constructor.
"""
from __future__ import annotations

import difflib
import inspect
import logging
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

log = logging.getLogger(__name__)

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}
TORCHVISION_PREFIX = "tv/"

# The five architectures of the Beyond-Naive-Quantization study, under the names fairq resolves them by.
STUDY_MODELS = ("resnet50", "mobilenetv2_100", "efficientnet_b0", "vit_small_patch16_224", "squeezenet1_1")


@dataclass(frozen=True)
class ModelInfo:
    """Where a built model came from: its registry ``name`` and ``pretrained``, the source of its weights
    (e.g. ``"timm:resnet18"``, ``"torchvision:DEFAULT"``; None = random initialisation)."""

    name: str
    pretrained: str | None = None


def register_model(name: str):
    """Decorator registering ``fn(num_classes, pretrained, **kwargs)`` under ``name``; it returns the model, or
    ``(model, weights source)`` when it may load weights (the source as :attr:`ModelInfo.pretrained` says it)."""

    def deco(fn):
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} registered twice")
        _REGISTRY[name] = fn
        return fn

    return deco


def _timm():
    import timm

    return timm


def _tv_models():
    import torchvision

    return set(torchvision.models.list_models())


def list_models() -> list[str]:
    """fairq's registered names (timm and torchvision names are accepted too)."""
    return sorted(_REGISTRY)


@contextmanager
def _hub_offline():
    """Resolve pretrained weights from the local HF/timm cache only, never the network."""
    # huggingface_hub reads HF_HUB_OFFLINE once at import, so the module constant is what must be switched.
    from huggingface_hub import constants

    old = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = old


def close_model_names(name: str, extra=()) -> list[str]:
    """Up to three model names close to ``name`` (``extra`` names first: a run's own models)."""
    pool = dict.fromkeys([*extra, *_REGISTRY, *_timm().list_models(), *sorted(_tv_models()),
                          *(TORCHVISION_PREFIX + n for n in sorted(_tv_models()))])
    return difflib.get_close_matches(name, list(pool), n=3, cutoff=0.6)


def _unknown(name: str) -> ValueError:
    from fairq.errors import UnknownModelError

    close = close_model_names(name)
    hint = f" (did you mean {', '.join(map(repr, close))}?)" if close else ""
    return UnknownModelError(
        f"unknown model {name!r}{hint}: not a fairq model ({', '.join(list_models())}), a timm name or a "
        f"torchvision name (prefix {TORCHVISION_PREFIX!r} to force torchvision)"
    )


def _resolve(name: str) -> str | None:
    """Which builder :func:`create_model` uses for ``name`` (``fairq``, ``torchvision``, ``timm``), or None."""
    if name in _REGISTRY:
        return "fairq"
    if name.startswith(TORCHVISION_PREFIX):
        return "torchvision" if name[len(TORCHVISION_PREFIX):] in _tv_models() else None
    if _timm().is_model(name):
        return "timm"
    return "torchvision" if name in _tv_models() else None


def is_model(name: str) -> bool:
    """Whether :func:`create_model` can build ``name`` (builds nothing)."""
    return _resolve(name) is not None


def check_model_name(name: str) -> None:
    """Raise :class:`fairq.errors.UnknownModelError` with close matches unless ``name`` is a model (builds nothing:
    a run checks its models with this at startup, in seconds)."""
    if not is_model(name):
        raise _unknown(name)


def skeleton(name: str) -> nn.Module:
    """``name``'s architecture without weights (parameters on PyTorch's ``meta`` device: no memory, no init cost),
    for questions about its structure (does it have attention heads?) before anything is trained."""
    check_model_name(name)
    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return create_model(name, num_classes=2, pretrained=False)


def _build_torchvision(name: str, num_classes: int, pretrained: bool | None, **kwargs) -> tuple[nn.Module, str | None]:
    import torchvision

    if pretrained is False:
        return torchvision.models.get_model(name, weights=None, num_classes=num_classes, **kwargs), None
    try:  # torchvision's cache (TORCH_HOME); offline this raises unless the user already has the file.
        model = torchvision.models.get_model(name, weights="DEFAULT", **kwargs)
    except Exception as err:  # noqa: BLE001 - any download/cache failure means "no weights here"
        if pretrained:
            raise RuntimeError(f"pretrained torchvision weights for {name!r} are not available offline: {err}") from err
        warnings.warn(f"no pretrained weights for torchvision {name!r} here ({type(err).__name__}); random init")
        return torchvision.models.get_model(name, weights=None, num_classes=num_classes, **kwargs), None
    _replace_torchvision_head(model, num_classes)
    return model, "torchvision:DEFAULT"


def _replace_torchvision_head(model: nn.Module, num_classes: int) -> None:
    """Swap the last classification layer for one with ``num_classes`` outputs."""
    if hasattr(model, "fc") and isinstance(model.fc, nn.Linear):
        model.fc = nn.Linear(model.fc.in_features, num_classes)
        return
    if hasattr(model, "heads") and hasattr(model.heads, "head"):
        model.heads.head = nn.Linear(model.heads.head.in_features, num_classes)
        return
    cls = getattr(model, "classifier", None)
    if isinstance(cls, nn.Sequential):
        for i in range(len(cls) - 1, -1, -1):
            layer = cls[i]
            if isinstance(layer, nn.Linear):
                cls[i] = nn.Linear(layer.in_features, num_classes)
                return
            if isinstance(layer, nn.Conv2d):  # squeezenet: 1x1 conv classifier
                cls[i] = nn.Conv2d(layer.in_channels, num_classes, layer.kernel_size)
                return
    raise ValueError(f"don't know how to replace the head of {type(model).__name__}")


def _build_timm(name: str, num_classes: int, pretrained: bool | None, **kwargs) -> tuple[nn.Module, str | None]:
    timm = _timm()
    if pretrained is False:
        return timm.create_model(name, pretrained=False, num_classes=num_classes, **kwargs), None
    try:
        with _hub_offline():
            model = timm.create_model(name, pretrained=True, num_classes=num_classes, **kwargs)
    except Exception as err:  # noqa: BLE001 - not in the local cache
        if pretrained:
            raise RuntimeError(
                f"pretrained timm weights for {name!r} are not in the local cache (HF_HOME / TORCH_HOME); "
                f"download them once with network, or pass pretrained=False: {err}"
            ) from err
        warnings.warn(f"no cached pretrained weights for timm {name!r}; using random initialisation")
        return timm.create_model(name, pretrained=False, num_classes=num_classes, **kwargs), None
    return model, f"timm:{name}"


def input_size_keyword(name: str) -> str | None:
    """The constructor keyword that sets the input size of a model built for one input size, or None.

    Such models size their position embeddings / attention windows at construction, so a 64-px dataset needs them
    built for 64 px; CNNs take any input size. Which ones, in :func:`create_model`'s resolution order: a fairq
    builder with an ``img_size`` parameter; a timm model whose pretrained config says ``fixed_input_size`` (ViT,
    DeiT, Swin, BEiT, LeViT, …: timm's own flag); torchvision's ViTs (``image_size``).
    """
    if name in _REGISTRY:
        return "img_size" if "img_size" in inspect.signature(_REGISTRY[name]).parameters else None
    tv_name = name[len(TORCHVISION_PREFIX):] if name.startswith(TORCHVISION_PREFIX) else None
    if tv_name is None and _timm().is_model(name):
        cfg = _timm().models.get_pretrained_cfg(name)
        return "img_size" if cfg is not None and getattr(cfg, "fixed_input_size", False) else None
    tv_name = tv_name or name
    return "image_size" if tv_name.startswith("vit_") and tv_name in _tv_models() else None


def create_model(name: str, num_classes: int, pretrained: bool | None = None, *, return_info: bool = False,
                 **kwargs) -> nn.Module | tuple[nn.Module, ModelInfo]:
    """Build a classifier with ``num_classes`` outputs.

    ``pretrained``: True requires weights (error if unavailable offline), False never loads them, None (default)
    loads them when they are available locally and otherwise warns and initialises randomly. With
    ``return_info`` the result is ``(model, ModelInfo)``, whose ``pretrained`` says where the weights came from
    (None = random init). Resolution order: fairq registry, ``tv/NAME`` (torchvision), timm names, torchvision
    names.
    """
    kind = _resolve(name)
    if kind == "fairq":
        built = _REGISTRY[name](num_classes=num_classes, pretrained=pretrained, **kwargs)
        model, source = built if isinstance(built, tuple) else (built, None)
    elif kind == "timm":
        model, source = _build_timm(name, num_classes, pretrained, **kwargs)
    elif kind == "torchvision":
        tv_name = name[len(TORCHVISION_PREFIX):] if name.startswith(TORCHVISION_PREFIX) else name
        model, source = _build_torchvision(tv_name, num_classes, pretrained, **kwargs)
    else:
        raise _unknown(name)
    return (model, ModelInfo(name, source)) if return_info else model
