"""Model registry over fairq builders, timm names and torchvision names."""
from . import zoo  # noqa: F401  (registers fairq's builders)
from .registry import STUDY_MODELS, create_model, input_size_keyword, list_models, register_model

__all__ = ["create_model", "input_size_keyword", "list_models", "register_model", "STUDY_MODELS"]
