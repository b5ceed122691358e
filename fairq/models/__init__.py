"""Model registry over fairq builders, timm names and torchvision names."""
from . import zoo  # noqa: F401  (registers fairq's builders)
from .registry import (STUDY_MODELS, check_model_name, close_model_names, create_model, input_size_keyword, is_model, list_models,
                       register_model, skeleton)

__all__ = ["check_model_name", "close_model_names", "create_model", "input_size_keyword", "is_model", "list_models", "register_model",
           "skeleton", "STUDY_MODELS"]
