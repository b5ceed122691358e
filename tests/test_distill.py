"""Knowledge distillation: a Lightning-trained student whose loss falls and whose predictions move toward the
teacher's, on a tiny CNN, ViT and BERT (registry: ``family="distillation"``)."""
import pytest
import torch

from fairq.compression import METHODS, MethodInputs, compress, make_config, model_size
from fairq.compression.distill import DistillModule, distill_loss, mean_kl
from fairq.compression.core.registry import get_method
from fairq.methods import load_methods
from test_compression import _build, _outputs

load_methods()
DISTILL_METHODS = sorted(m for m in METHODS if get_method(m).family == "distillation")
# students that start far from the teacher, so that moving toward it is something training has to do
STUDENT = {"cnn": {"student": "tiny_cnn", "student_kwargs": {"width": 8}, "lr": 1e-2},
           "vit": {"student": "half_depth", "init": "random"}, "bert": {"student": "half_depth", "init": "random"}}


@pytest.fixture(scope="module", params=["cnn", "vit", "bert"])
def zoo(request):
    z = _build(request.param)
    torch.manual_seed(1)
    with torch.no_grad():  # a teacher with confident, input-dependent outputs (random init is near-uniform)
        for p in z.model.parameters():
            if p.dim() > 1:
                p.mul_(3.0)
        last = [m for m in z.model.modules() if isinstance(m, torch.nn.Linear)][-1]
        last.weight.mul_(10.0)  # LayerNorms undo the scaling above in the transformers
    return z


def test_distill_is_registered_with_its_family():
    assert DISTILL_METHODS == ["distill"]
    assert get_method("distill").needs == {"training", "validation", "calibration"}  # calibration: the FLOPs batch


@pytest.mark.parametrize("method", DISTILL_METHODS)
def test_student_loss_falls_and_predictions_move_toward_the_teacher(zoo, method):
    # alpha = 0.9: mostly imitation (the tiny data's labels are random, unrelated to the teacher)
    cfg = make_config(method, **{"epochs": 6, "lr": 3e-3, "alpha": 0.9, "temperature": 2.0, **STUDENT[zoo.kind]})
    res = compress(zoo.model, cfg, MethodInputs(train_loader=zoo.train, validation=zoo.val))
    student, rec = res.model, res.record
    assert student is not zoo.model and rec["distill_steps"] == 6 * len(zoo.train)
    assert rec["distill_loss_last"] < rec["distill_loss_first"]
    assert rec["kl_to_teacher_after"] < rec["kl_to_teacher_before"]
    assert rec["kl_to_teacher_after"] == pytest.approx(mean_kl(student, zoo.model, zoo.val))  # recomputable
    assert rec["params"] < rec["teacher_params"] == sum(p.numel() for p in zoo.model.parameters())
    assert model_size(student)[0] < model_size(zoo.model)[0]
    out = _outputs(student, zoo.calib)
    assert out.shape == _outputs(zoo.model, zoo.calib).shape and torch.isfinite(out).all()
    assert (res.weight_bits, res.backend) == (32, "fp32")


def test_distill_loss_is_temperature_scaled_kl_plus_hard_label():
    torch.manual_seed(0)
    s, t, y = torch.randn(5, 3), torch.randn(5, 3), torch.randint(0, 3, (5,))
    T = 3.0
    p_t = torch.softmax(t / T, 1)
    kl = (p_t * (p_t.log() - torch.log_softmax(s / T, 1))).sum(1).mean()
    ce = -torch.log_softmax(s, 1)[torch.arange(5), y].mean()
    assert distill_loss(s, t, y, T, 0.25) == pytest.approx(float(0.25 * T * T * kl + 0.75 * ce), rel=1e-5)
    assert distill_loss(t, t, y, T, 1.0) == pytest.approx(0.0, abs=1e-6)  # a perfect imitation costs nothing


def test_distill_trains_through_a_lightning_module():
    import lightning as L

    assert issubclass(DistillModule, L.LightningModule)
    with pytest.raises(ValueError, match="no bits"):
        make_config("distill", 4)
    with pytest.raises(ValueError, match="half_depth"):
        compress(_build("cnn").model, make_config("distill"), MethodInputs(train_loader=_build("cnn").train,
                                                                            validation=_build("cnn").val))
