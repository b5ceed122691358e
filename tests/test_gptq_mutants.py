"""GPTQ pinned by value (issue 27: mutation testing of ``fairq/compression/quant/gptq.py``).

Every expected value is computed here independently of fairq's code, in float64:
- the grid by the min-max formulas (symmetric: ``max|w| / ((qmax − qmin) / 2)``, zero point 0; affine:
  ``(max⁺ − min⁻) / (qmax − qmin)``, ``zp = qmin − round(min⁻ / scale)``);
- GPTQ by Frantar et al.'s column loop without lazy blocks: dead columns zeroed (``H_jj := 1``), columns taken in
  natural order or by decreasing ``H_jj`` (``act_order``), ``U`` = upper Cholesky factor of ``(H + λI)⁻¹``
  (``λ = damp · mean diag H``), each column's error ``(w − q) / U_jj`` spread over the later columns by row ``j`` of
  ``U`` — so fairq's blocked (lazy-batch) float32 loop must give the same codes for every block size;
- the handler's Hessians ``2/n Σ x xᵀ`` from this test's own input capture.
"""
from __future__ import annotations

import logging
import math
import warnings

import pytest
import torch
from torch import nn

from fairq.compression import GPTQConfig, MethodInputs, RTNConfig, compress, effective_weights
from fairq.compression.quant import gptq as G


# ------------------------------------------------------------------------------------------ references (float64)
def _qrange(bits):
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1


def _ref_qparams(rows, bits, symmetric):
    """Min-max scale / zero point of each row of ``rows`` ``[r, d]`` (torch.ao's formulas, written out)."""
    qmin, qmax = _qrange(bits)
    rows = rows.double()
    lo, hi = rows.amin(1).clamp(max=0), rows.amax(1).clamp(min=0)
    eps = torch.finfo(torch.float32).eps
    if symmetric:
        scale = (torch.maximum(-lo, hi) / ((qmax - qmin) / 2)).clamp(min=eps)
        zp = torch.zeros_like(scale)
    else:
        scale = ((hi - lo) / (qmax - qmin)).clamp(min=eps)
        zp = (qmin - torch.round(lo / scale)).clamp(qmin, qmax)
    return scale, zp


def _ref_factor(h, damp):
    h = h.double()
    h = h + damp * torch.diagonal(h).mean() * torch.eye(h.shape[0], dtype=h.dtype)
    return torch.linalg.cholesky(torch.linalg.inv(h), upper=True)


def _ref_gptq(w, h, s, z, bits, *, damp=0.01, act_order=False):
    """Codes ``[o, d]`` of one weight matrix (see the module doc), column by column, no lazy blocks."""
    qmin, qmax = _qrange(bits)
    w, h, s, z = (t.double().clone() for t in (w, h, s, z))
    d = w.shape[1]
    dead = torch.nonzero(torch.diagonal(h) == 0).flatten()
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    order = torch.argsort(torch.diagonal(h), descending=True) if act_order else torch.arange(d)
    u = _ref_factor(h[order][:, order], damp)
    wp, sp, zp = w[:, order], s[:, order], z[:, order]
    codes = torch.zeros_like(wp)
    for i in range(d):
        # w / s rounded in float32, as weights and scales are stored: the symmetric grid puts max|w| exactly on a
        # tie (±(2**(k-1) − ½) steps), which float64 would resolve differently
        c = torch.clamp(torch.round((wp[:, i].float() / sp[:, i].float()).double()) + zp[:, i], qmin, qmax)
        codes[:, i] = c
        err = (wp[:, i] - (c - zp[:, i]) * sp[:, i]) / u[i, i]
        wp[:, i:] -= err[:, None] * u[i, i:][None, :]
    out = torch.empty_like(codes)
    out[:, order] = codes
    return out


def _data(seed, n=256, d=12, out=5, dead=()):
    """Correlated, unevenly scaled inputs ``[n, d]`` (so compensation and column order matter), their Hessian
    ``2/n XᵀX`` and a weight ``[out, d]``; the columns in ``dead`` are always zero."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64) @ torch.randn(d, d, generator=g, dtype=torch.float64)
    x = x * torch.linspace(0.2, 3.0, d, dtype=torch.float64)[torch.randperm(d, generator=g)]
    x[:, list(dead)] = 0.0
    w = torch.randn(out, d, generator=g, dtype=torch.float64)
    return x, (2 / n) * x.T @ x, w


def _grid_of(w, bits, symmetric=True):
    s, z = _ref_qparams(w, bits, symmetric)
    s = s.float().double()  # the scale fairq stores (float32)
    return s[:, None].expand_as(w).contiguous(), z[:, None].expand_as(w).contiguous()


def _codes(w, h, s, z, bits, **kw):
    """fairq's codes of one ``[o, d]`` matrix (float32, batch of one group)."""
    return G.gptq_codes(w[None].float(), h[None].float(), s[None].float(), z[None].float(), bits, **kw)[0].double()


# ------------------------------------------------------------------------------------------ grid
@pytest.mark.parametrize("symmetric", [True, False])
def test_grid_per_channel_is_min_max_per_output_channel(symmetric):
    torch.manual_seed(0)
    lin = nn.Linear(6, 4)
    with torch.no_grad():
        lin.weight[1] = lin.weight[1].abs() + 0.1  # an all-positive channel: the affine zero point is at qmin
    scale, zp, s, z = G.grid(lin, 3, per_channel=True, symmetric=symmetric, group_size=None)
    rs, rz = _ref_qparams(lin.weight.detach(), 3, symmetric)
    torch.testing.assert_close(scale.double(), rs, rtol=1e-6, atol=0)
    assert zp.dtype == torch.int32 and torch.equal(zp.double(), rz)
    assert scale.shape == (4,) and s.shape == z.shape == (1, 4, 6) and s.dtype == z.dtype == torch.float32
    torch.testing.assert_close(s[0].double(), rs[:, None].expand(4, 6), rtol=1e-6, atol=0)
    assert torch.equal(z[0].double(), rz[:, None].expand(4, 6))
    if not symmetric:
        assert zp[1] == -4 and z[0, 1].eq(-4).all()


@pytest.mark.parametrize("symmetric", [True, False])
def test_grid_per_tensor_is_one_scale_spread_over_every_weight(symmetric):
    torch.manual_seed(1)
    lin = nn.Linear(5, 3)
    scale, zp, s, z = G.grid(lin, 4, per_channel=False, symmetric=symmetric, group_size=None)
    rs, rz = _ref_qparams(lin.weight.detach().reshape(1, -1), 4, symmetric)
    torch.testing.assert_close(scale.double().reshape(1), rs, rtol=1e-6, atol=0)
    assert torch.equal(zp.double().reshape(1), rz)
    assert s.shape == z.shape == (1, 3, 5)
    torch.testing.assert_close(s.double(), rs.expand(1, 3, 5), rtol=1e-6, atol=0)
    assert torch.equal(z.double(), rz.expand(1, 3, 5))


def test_grid_with_groups_has_one_scale_per_input_slice():
    torch.manual_seed(2)
    lin = nn.Linear(12, 3)
    with torch.no_grad():
        lin.weight[:, 4:8] *= 10  # the middle group has a much larger range
    scale, zp, s, z = G.grid(lin, 4, per_channel=True, symmetric=False, group_size=4)
    rs, rz = _ref_qparams(lin.weight.detach().reshape(9, 4), 4, symmetric=False)
    assert scale.shape == zp.shape == (3, 3)
    torch.testing.assert_close(scale.double(), rs.reshape(3, 3), rtol=1e-6, atol=0)
    assert torch.equal(zp.double(), rz.reshape(3, 3))
    torch.testing.assert_close(s[0].double(), rs.reshape(3, 3).repeat_interleave(4, dim=1), rtol=1e-6, atol=0)
    assert torch.equal(z[0].double(), rz.reshape(3, 3).repeat_interleave(4, dim=1))


@pytest.mark.parametrize("group_size", [5, 12, 16])
def test_grid_falls_back_to_per_channel_when_the_group_does_not_split_the_row(group_size):
    """``group_size`` not dividing the input width, equal to it or wider: one scale per output channel."""
    torch.manual_seed(3)
    lin = nn.Linear(12, 3)
    scale, zp, s, _ = G.grid(lin, 4, per_channel=True, symmetric=True, group_size=group_size)
    rs, _ = _ref_qparams(lin.weight.detach(), 4, True)
    assert scale.shape == (3,)
    torch.testing.assert_close(s[0].double(), rs[:, None].expand(3, 12), rtol=1e-6, atol=0)


def test_grid_of_a_grouped_convolution_is_split_per_convolution_group():
    torch.manual_seed(4)
    conv = nn.Conv2d(4, 6, 3, groups=2)
    scale, zp, s, z = G.grid(conv, 4, per_channel=True, symmetric=False, group_size=None)
    rs, rz = _ref_qparams(conv.weight.detach().reshape(6, -1), 4, False)
    assert s.shape == z.shape == (2, 3, 18)
    torch.testing.assert_close(s.double(), rs.reshape(2, 3, 1).expand(2, 3, 18), rtol=1e-6, atol=0)
    assert torch.equal(z.double(), rz.reshape(2, 3, 1).expand(2, 3, 18))


# ------------------------------------------------------------------------------------------ Hessian factor
def test_inverse_hessian_factor_is_the_upper_cholesky_factor_of_the_damped_inverse():
    _, h, _ = _data(5, d=7)
    h2 = torch.stack([h, 3 * h + torch.eye(7, dtype=h.dtype)])
    for damp in (0.01, 0.3):
        u = G._inverse_hessian_factor(h2.float(), damp)
        for k in range(2):
            torch.testing.assert_close(u[k].double(), _ref_factor(h2[k], damp), rtol=2e-4, atol=1e-6)
        assert torch.equal(u, torch.triu(u))


def test_an_indefinite_hessian_gets_tenfold_damping_until_positive_definite(caplog):
    h = torch.tensor([[[1.0, 3.0], [3.0, 1.0]]])  # eigenvalues 4 and −2: λ must exceed 2 (damp 0.01 · 10³ = 10)
    with caplog.at_level(logging.INFO, logger="fairq.compression.quant.gptq"):
        u = G._inverse_hessian_factor(h, 0.01)
    torch.testing.assert_close(u[0].double(), _ref_factor(h[0], 10.0), rtol=1e-5, atol=1e-7)
    assert caplog.messages == ["gptq: Hessian damping raised to 10 to stay positive definite"]
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="fairq.compression.quant.gptq"):
        G._inverse_hessian_factor(torch.eye(2)[None], 0.01)
    assert "damping raised" not in caplog.text  # positive definite at once: nothing to report
    # eigenvalues 1 ± 5000, mean diagonal 1: the last try, λ = 0.01 · 10⁵ = 1000, is not enough (10⁶ would be)
    h = torch.tensor([[[1.0, 5000.0], [5000.0, 1.0]]])
    with pytest.raises(RuntimeError, match=r"^gptq: the Hessian stays singular even with 10\^5 x damping$"):
        G._inverse_hessian_factor(h, 0.01)


def test_the_sixth_damping_attempt_is_still_tried():
    h = torch.tensor([[[1.0, -50.0], [-50.0, 1.0]]])  # eigenvalues 51 and −49: needs λ > 49 → 0.001 · 10⁵ = 100
    u = G._inverse_hessian_factor(h, 0.001)
    torch.testing.assert_close(u[0].double(), _ref_factor(h[0], 100.0), rtol=1e-5, atol=1e-7)


# ------------------------------------------------------------------------------------------ the column loop
@pytest.mark.parametrize("act_order", [False, True])
@pytest.mark.parametrize("block_size", [1, 4, 5, 12, 128])
def test_gptq_codes_equal_the_column_by_column_reference(act_order, block_size):
    for seed, bits, symmetric, damp in ((0, 3, True, 0.01), (1, 4, False, 0.01), (2, 3, False, 0.5)):
        _, h, w = _data(seed)
        s, z = _grid_of(w, bits, symmetric)
        ours = _codes(w, h, s, z, bits, damp=damp, act_order=act_order, block_size=block_size)
        ref = _ref_gptq(w, h, s, z, bits, damp=damp, act_order=act_order)
        assert torch.equal(ours, ref), (seed, bits, symmetric, damp)
        rtn = torch.clamp(torch.round(w / s) + z, *_qrange(bits))
        assert not torch.equal(ours, rtn)  # compensation changed codes: the comparison is not vacuous


def test_act_order_takes_columns_by_decreasing_hessian_diagonal_not_increasing():
    """Issue 27's named mutant: the increasing order gives other codes than the decreasing one fairq documents."""
    _, h, w = _data(7)
    s, z = _grid_of(w, 3)
    ours = _codes(w, h, s, z, 3, act_order=True)
    assert torch.equal(ours, _ref_gptq(w, h, s, z, 3, act_order=True))
    # the increasing order, written as a reference on the reversed columns
    inc = torch.argsort(torch.diagonal(h))
    rev = _ref_gptq(w[:, inc], h[inc][:, inc], s[:, inc], z[:, inc], 3)
    increasing = torch.empty_like(rev)
    increasing[:, inc] = rev
    assert not torch.equal(ours, increasing)
    assert not torch.equal(ours, _codes(w, h, s, z, 3))  # and act_order is not the natural order


def test_gptq_codes_of_several_convolution_groups_are_independent():
    _, h0, w0 = _data(8, d=9, out=4)
    _, h1, w1 = _data(9, d=9, out=4)
    s0, z0 = _grid_of(w0, 3, False)
    s1, z1 = _grid_of(w1, 3, False)
    ours = G.gptq_codes(torch.stack([w0, w1]).float(), torch.stack([h0, h1]).float(), torch.stack([s0, s1]).float(),
                        torch.stack([z0, z1]).float(), 3, act_order=True, block_size=4)
    assert torch.equal(ours[0].double(), _ref_gptq(w0, h0, s0, z0, 3, act_order=True))
    assert torch.equal(ours[1].double(), _ref_gptq(w1, h1, s1, z1, 3, act_order=True))


@pytest.mark.parametrize("act_order", [False, True])
def test_dead_columns_get_the_zero_code_and_count_as_unit_diagonal_in_the_damping(act_order):
    _, h, w = _data(10, d=8, dead=(2, 5))
    h = h * 1e-3  # a small diagonal, so the dead columns' 1 dominates mean(diag H) and the damping
    s, z = _grid_of(w, 3, symmetric=False)
    h32, w32 = h.float(), w.float()
    h_before, w_before = h32.clone(), w32.clone()
    ours = G.gptq_codes(w32[None], h32[None], s[None].float(), z[None].float(), 3, damp=0.5, act_order=act_order,
                        block_size=3)[0].double()
    assert torch.equal(ours, _ref_gptq(w, h, s, z, 3, damp=0.5, act_order=act_order))
    assert torch.equal(ours[:, [2, 5]], z[:, [2, 5]])  # weight zeroed → the zero point's code
    assert torch.equal(h32, h_before) and torch.equal(w32, w_before)  # the caller's tensors are left alone


def test_codes_are_clamped_to_the_signed_k_bit_range():
    # a grid far too fine for the weights: every code saturates at qmin / qmax of 3 bits
    _, h, w = _data(11, d=6, out=3)
    s = torch.full_like(w, 1e-3)
    z = torch.zeros_like(w)
    ours = _codes(w, h, s, z, 3)
    assert ours.min() == -4 and ours.max() == 3
    assert torch.equal(ours, _ref_gptq(w, h, s, z, 3))


# ------------------------------------------------------------------------------------------ one layer
def test_reconstruction_error_is_the_mean_output_error_on_the_calibration_rows():
    x, h, w = _data(12, n=64, d=6, out=3)
    q = w + 0.1 * torch.randn(w.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    expected = float(((x @ (w - q).T) ** 2).sum(1).mean())
    got = G.reconstruction_error(w[None].float(), q[None].float(), h[None].float())
    assert got == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("group_size, act_order", [(None, False), (4, True)])
def test_quantize_layer_gptq_stores_the_codes_on_the_layer_grid_with_both_errors(group_size, act_order):
    _, h, w = _data(13, d=8, out=4)
    lin = nn.Linear(8, 4)
    with torch.no_grad():
        lin.weight.copy_(w.float())
    cfg = GPTQConfig(weight_bits=3, symmetric=False, group_size=group_size, act_order=act_order, block_size=3,
                     damp=0.05)
    qw, errors = G.quantize_layer_gptq(lin, h[None].float(), cfg)
    rows = w.float().double().reshape(4 * 8 // (group_size or 8), group_size or 8)
    rs, rz = _ref_qparams(rows, 3, False)
    s = rs.reshape(4, -1).repeat_interleave(group_size or 8, dim=1)
    z = rz.reshape(4, -1).repeat_interleave(group_size or 8, dim=1)
    ref = _ref_gptq(w.float().double(), h.float().double(), s.float().double(), z, 3, damp=0.05, act_order=act_order)
    for other in (dict(damp=0.01, act_order=act_order), dict(damp=0.05, act_order=not act_order)):  # options matter
        assert not torch.equal(ref, _ref_gptq(w.float().double(), h.float().double(), s.float().double(), z, 3,
                                              **other)), other
    assert qw.codes.dtype == torch.int8 and qw.codes.shape == (4, 8) and qw.bits == 3
    assert torch.equal(qw.codes.double(), ref)
    assert qw.scale.shape == ((4,) if group_size is None else (4, 2))
    torch.testing.assert_close(qw.scale.double().reshape(-1), rs, rtol=1e-6, atol=0)
    assert torch.equal(qw.zero_point.double().reshape(-1), rz)
    rtn = torch.clamp(torch.round(w.float().double() / s) + z, -4, 3)
    wf = w.float().double()
    expected = {"gptq": float(torch.trace((wf - (ref - z) * s) @ h @ (wf - (ref - z) * s).T) / 2),
                "rtn": float(torch.trace((wf - (rtn - z) * s) @ h @ (wf - (rtn - z) * s).T) / 2)}
    assert set(errors) == {"gptq", "rtn"}
    for k in expected:
        assert errors[k] == pytest.approx(expected[k], rel=1e-4), k
    assert errors["gptq"] < errors["rtn"]


# ------------------------------------------------------------------------------------------ the model and the handler
def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(10, 8), nn.Tanh(), nn.Linear(8, 3)).eval()


def _calib():
    g = torch.Generator().manual_seed(1)
    mix = torch.randn(10, 10, generator=g)
    return [torch.randn(40, 10, generator=g) @ mix for _ in range(3)]


def _hessian(xs):
    x = torch.cat([t.reshape(-1, t.shape[-1]) for t in xs]).double()
    return (2 / len(x)) * x.T @ x


def _expected_weights(model, calib, *, bits, sequential, act_order=False, damp=0.01, batches=None, symmetric=True):
    """Each layer's GPTQ weight, from Hessians captured here (float model, or with earlier layers quantized)."""
    calib = calib[:batches] if batches else calib
    w0, w1 = model[0].weight.detach().double(), model[2].weight.detach().double()
    out = {}
    s0, z0 = _grid_of(w0, bits, symmetric)
    out["0"] = (_ref_gptq(w0, _hessian(calib).float().double(), s0, z0, bits, damp=damp, act_order=act_order)
                - z0) * s0
    first = out["0"] if sequential else w0
    hidden = [torch.tanh(x.double() @ first.T + model[0].bias.detach().double()) for x in calib]
    s1, z1 = _grid_of(w1, bits, symmetric)
    out["2"] = (_ref_gptq(w1, _hessian(hidden), s1, z1, bits, damp=damp, act_order=act_order) - z1) * s1
    return out


@pytest.mark.parametrize("sequential", [True, False])
def test_quantize_gptq_layer_hessians_are_sequential_or_from_the_float_model(sequential):
    model, calib = _mlp(), _calib()
    res = compress(model, GPTQConfig(weight_bits=4, sequential=sequential, act_order=True),
                   MethodInputs(calibration=calib))
    got = effective_weights(res.model)
    want = _expected_weights(model, calib, bits=4, sequential=sequential, act_order=True)
    for name in ("0", "2"):
        torch.testing.assert_close(got[name].double(), want[name], rtol=1e-5, atol=1e-6)
    other = _expected_weights(model, calib, bits=4, sequential=not sequential, act_order=True)
    assert not torch.allclose(other["2"], want["2"], rtol=1e-5, atol=1e-6)  # the two modes differ on these data


@pytest.mark.parametrize("sequential", [True, False])
def test_only_the_first_calibration_batches_make_the_hessians(sequential):
    model, calib = _mlp(), _calib()
    res = compress(model, GPTQConfig(weight_bits=3, sequential=sequential, calibration_batches=1),
                   MethodInputs(calibration=calib))
    got = effective_weights(res.model)
    want = _expected_weights(model, calib, bits=3, sequential=sequential, batches=1)
    for name in ("0", "2"):
        torch.testing.assert_close(got[name].double(), want[name], rtol=1e-5, atol=1e-6)


def test_the_handler_records_the_layers_the_error_ratio_and_the_reconstruction_errors():
    model, calib = _mlp(), _calib()
    res = compress(model, GPTQConfig(weight_bits=4, damp=0.1), MethodInputs(calibration=calib))
    errors = res.info["reconstruction_error"]
    assert set(errors) == {"0", "2"} and all(set(e) == {"gptq", "rtn"} for e in errors.values())
    # layer 0 sees the float inputs: its errors are the closed forms on the captured Hessian
    h = _hessian(calib)
    w0 = model[0].weight.detach().double()
    s0, z0 = _grid_of(w0, 4)
    q_rtn = (torch.clamp(torch.round((w0.float() / s0.float()).double()) + z0, -8, 7) - z0) * s0
    q_gptq = effective_weights(res.model)["0"].double()
    assert errors["0"]["rtn"] == pytest.approx(float(torch.trace((w0 - q_rtn) @ h @ (w0 - q_rtn).T) / 2), rel=1e-4)
    assert errors["0"]["gptq"] == pytest.approx(float(torch.trace((w0 - q_gptq) @ h @ (w0 - q_gptq).T) / 2),
                                                rel=1e-4)
    total = {k: errors["0"][k] + errors["2"][k] for k in ("gptq", "rtn")}
    assert res.record["gptq_layers"] == 2
    assert res.record["gptq_error_ratio"] == pytest.approx(total["gptq"] / total["rtn"], rel=1e-12)
    assert res.record["calibration_draw"] == "natural"
    assert len(res.artifacts) == 1 and res.artifacts[0].folder == "ptq" and res.artifacts[0].column is None
    assert res.artifacts[0].content == {"reconstruction_error": errors}
    assert (res.weight_bits, res.act_bits, res.backend) == (4, None, "simulated")
    assert all(res.model[i].act_mode is None for i in (0, 2))  # weight-only: the layers' inputs stay float


def test_the_error_ratio_is_nan_when_round_to_nearest_is_exact():
    model = nn.Sequential(nn.Linear(4, 2)).eval()
    with torch.no_grad():  # weights on the 4-bit grid of their channel already: RTN (and GPTQ) reproduce them
        model[0].weight.copy_(torch.tensor([[-8.0, 7.0, 1.0, 0.0], [-8.0, 2.0, 7.0, -3.0]]) * 0.25)
    res = compress(model, GPTQConfig(weight_bits=4, symmetric=False), MethodInputs(calibration=[torch.randn(8, 4)]))
    errors = res.info["reconstruction_error"]["0"]
    assert errors["rtn"] == 0.0 and errors["gptq"] == 0.0
    assert math.isnan(res.record["gptq_error_ratio"]) and res.record["gptq_layers"] == 1


def test_activations_are_calibrated_statically_on_the_gptq_weights():
    model, calib = _mlp(), _calib()
    wonly = compress(model, GPTQConfig(weight_bits=4), MethodInputs(calibration=calib))
    res = compress(model, GPTQConfig(weight_bits=4, act_bits=4), MethodInputs(calibration=calib))
    assert (res.weight_bits, res.act_bits, res.backend) == (4, 4, "simulated")
    for name in ("0", "2"):  # the same GPTQ codes (act_bits changes only the inputs)
        assert torch.equal(effective_weights(res.model)[name], effective_weights(wonly.model)[name])
    x = calib[0]
    with torch.no_grad():
        assert not torch.allclose(res.model(x), wonly.model(x), atol=1e-3)


@pytest.mark.parametrize("act_symmetric", [True, False])
def test_activation_ranges_come_from_the_first_batches_through_the_gptq_weights(act_symmetric):
    """``act_bits`` with ``calibration_batches=2``: each layer's input range is the min / max over the first two
    batches, the second layer's inputs computed with the first layer's GPTQ weights (not the float ones)."""
    model, calib = _mlp(), _calib()
    cfg = GPTQConfig(weight_bits=4, act_bits=6, act_symmetric=act_symmetric, calibration_batches=2, symmetric=False)
    res = compress(model, cfg, MethodInputs(calibration=calib))
    first = effective_weights(res.model)["0"].double()
    torch.testing.assert_close(first, _expected_weights(model, calib, bits=4, sequential=True, batches=2,
                                                        symmetric=False)["0"], rtol=1e-5, atol=1e-6)
    inputs = {"0": torch.cat(calib[:2]).double()}
    inputs["2"] = torch.tanh(inputs["0"] @ first.T + model[0].bias.detach().double())
    qmin, qmax = (-32, 31) if act_symmetric else (0, 63)
    for name, x in inputs.items():
        layer = res.model[int(name)]
        lo, hi = float(x.min().clamp(max=0)), float(x.max().clamp(min=0))
        if act_symmetric:
            scale, zp = max(-lo, hi) / ((qmax - qmin) / 2), 0
        else:
            scale = (hi - lo) / (qmax - qmin)
            zp = qmin - round(lo / scale)
        assert layer.act_mode == "static" and layer.act_bits == 6 and layer.act_symmetric is act_symmetric
        assert (layer.act_quant_min, layer.act_quant_max) == (qmin, qmax)
        assert float(layer.act_scale) == pytest.approx(scale, rel=1e-5), name
        assert int(layer.act_zero_point) == zp, name
        assert layer.per_channel is True and layer.symmetric is False and layer.weight_bits == 4


def test_the_activation_observer_and_its_percentile_reach_the_calibration():
    """The first layer's input is the calibration batch itself, so its activation range is the one round-to-nearest
    calibrates with the same observer settings."""
    model, calib = _mlp(), _calib()
    scales = {}
    for pct in (90.0, 99.99):
        opts = dict(weight_bits=4, act_bits=8, observer="percentile", percentile=pct)
        ours = compress(model, GPTQConfig(**opts), MethodInputs(calibration=calib)).model[0]
        rtn = compress(model, RTNConfig(**opts), MethodInputs(calibration=calib)).model[0]
        assert float(ours.act_scale) == float(rtn.act_scale) and int(ours.act_zero_point) == int(rtn.act_zero_point)
        scales[pct] = float(ours.act_scale)
    minmax = compress(model, GPTQConfig(weight_bits=4, act_bits=8), MethodInputs(calibration=calib)).model[0]
    assert scales[90.0] < scales[99.99] <= float(minmax.act_scale)


def test_weight_only_layers_keep_float_inputs_and_a_per_tensor_grid_is_one_scale():
    model, calib = _mlp(), _calib()
    res = compress(model, GPTQConfig(weight_bits=4, per_channel=False), MethodInputs(calibration=calib))
    h = _hessian(calib)
    w0 = model[0].weight.detach().double()
    rs, rz = _ref_qparams(w0.reshape(1, -1), 4, True)
    s0, z0 = rs.float().double().expand_as(w0), rz.expand_as(w0)
    want = (_ref_gptq(w0, h.float().double(), s0, z0, 4) - z0) * s0
    torch.testing.assert_close(effective_weights(res.model)["0"].double(), want, rtol=1e-5, atol=1e-6)
    for i in (0, 2):
        layer = res.model[i]
        assert layer.per_channel is False and layer.weight_scale.numel() == 1
        assert layer.act_mode is None and layer.act_bits is None


def test_a_single_output_layer():
    """One output channel (a binary head): one scale, and the same GPTQ codes as the reference."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 1)).eval()
    calib = [torch.randn(32, 6) @ torch.randn(6, 6) for _ in range(2)]
    res = compress(model, GPTQConfig(weight_bits=3), MethodInputs(calibration=calib))
    w = model[0].weight.detach().double()
    s, z = _grid_of(w, 3)
    want = (_ref_gptq(w, _hessian(calib).float().double(), s, z, 3) - z) * s
    torch.testing.assert_close(effective_weights(res.model)["0"].double(), want, rtol=1e-5, atol=1e-6)
    scale, zp, cs, cz = G.grid(model[0], 3, per_channel=True, symmetric=False, group_size=None)
    rs, rz = _ref_qparams(w, 3, False)
    assert scale.shape == (1,) and cs.shape == (1, 1, 6)
    torch.testing.assert_close(cs[0].double(), rs[:, None].expand(1, 6), rtol=1e-6, atol=0)
    assert torch.equal(cz[0].double(), rz[:, None].expand(1, 6))


def test_a_layer_never_called_is_rounded_to_nearest_with_a_warning():
    class Half(nn.Module):
        def __init__(self):
            super().__init__()
            self.unused, self.used, self.last = nn.Linear(6, 2), nn.Linear(6, 6), nn.Linear(6, 2)

        def forward(self, x):
            return self.last(self.used(x))  # the layers after the never-called one are still GPTQ'd

    torch.manual_seed(0)
    model = Half().eval()
    calib = [torch.randn(16, 6) for _ in range(2)]
    with pytest.warns(UserWarning) as record:
        res = compress(model, GPTQConfig(weight_bits=3), MethodInputs(calibration=calib))
    assert "gptq: layers never called during calibration are rounded to nearest: ['unused']" in [
        str(r.message) for r in record]
    assert set(res.info["reconstruction_error"]) == {"used", "last"} and res.record["gptq_layers"] == 2
    w = model.unused.weight.detach().double()
    s, z = _grid_of(w, 3)
    torch.testing.assert_close(effective_weights(res.model)["unused"].double(),
                               (torch.clamp(torch.round(w / s) + z, -4, 3) - z) * s, rtol=1e-6, atol=1e-7)


def test_a_group_size_that_does_not_divide_the_width_warns_and_keeps_per_channel_scales():
    model, calib = _mlp(), _calib()  # widths 10 and 8: group_size 4 divides only the second
    with pytest.warns(UserWarning) as record:
        res = compress(model, GPTQConfig(weight_bits=3, group_size=4), MethodInputs(calibration=calib))
    assert [str(r.message) for r in record] == [
        "gptq: group_size=4 does not divide the input width of ['0']; they keep one scale per output channel"]
    assert res.model[0].weight_scale.shape == (8,) and res.model[2].weight_scale.shape == (3, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        compress(model, GPTQConfig(weight_bits=3, group_size=2), MethodInputs(calibration=calib))  # divides both


def test_quantize_gptq_needs_calibration_data_and_a_quantizable_layer():
    with pytest.raises(ValueError,
                       match=r"^gptq needs calibration_data \(its Hessians come from the layers' inputs\)$"):
        G.quantize_gptq(_mlp(), GPTQConfig(weight_bits=4), None)
    with pytest.raises(ValueError, match=r"^Sequential has no quantizable layers \(skip patterns \('0', '2'\)\)$"):
        G.quantize_gptq(_mlp(), GPTQConfig(weight_bits=4, skip_modules=["0", "2"]), _calib())


def test_gptq_config_defaults_and_errors():
    cfg = GPTQConfig()
    assert (cfg.group_size, cfg.damp, cfg.act_order, cfg.block_size, cfg.sequential) == (None, 0.01, False, 128, True)
    for bad, msg in [
        (dict(block_size=0), "block_size must be a positive int, got 0"),
        (dict(block_size=2.5), "block_size must be a positive int, got 2.5"),
        (dict(group_size=2.5), "group_size must be a positive int, got 2.5"),
        (dict(damp=0.0), "damp must be a positive number, got 0.0"),
        (dict(backend="int4", weight_bits=4),
         "gptq runs on the simulated backend only (its codes are set per layer), got backend='int4'; use "
         "backend='auto' or 'simulated'"),
        (dict(backend="int8", weight_bits=8, act_bits=8),
         "gptq runs on the simulated backend only (its codes are set per layer), got backend='int8'; use "
         "backend='auto' or 'simulated'"),
        (dict(simulation="graph"),
         "gptq needs simulation='layer_input': the deployed-graph simulation folds BatchNorm and re-rounds the "
         "weights, which would discard GPTQ's codes"),
        (dict(group_size=4, per_channel=False), "group_size needs per_channel=True (groups split each output channel)"),
    ]:
        with pytest.raises(ValueError) as info:
            GPTQConfig(**bad)
        assert str(info.value) == msg
    GPTQConfig(group_size=4, per_channel=True)
    GPTQConfig(group_size=None, per_channel=False)
    GPTQConfig(backend="simulated")
