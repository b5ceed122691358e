"""Deployment-faithful simulated INT-k (k = 2..8): the real INT8 backend's quantized graph, at k bits, in FP32 ops.

The model is traced and annotated exactly as :func:`fairq.compression.backends.int8.convert_static_int8` does it
(``torch.export`` → torchao ``prepare_pt2e`` with the same ``X86InductorQuantizer`` annotation), only the
quantization specs carry k-bit ranges; it is calibrated on the same batches and ``convert_pt2e`` gives the
quantized *reference* graph, which is kept instead of being lowered to oneDNN kernels. So the simulation has
what the deployed INT8 model has: BatchNorm folded into the convolutions, activations quantized where the tensor
is *produced* (after the fused ReLU/ReLU6), residual adds / concatenations / pooling quantized as the x86
quantizer annotates them, and the classifier's input quantized. Weights are stored as integer codes (per output
channel, signed k-bit), activations per tensor as unsigned codes ``0..2^k-1`` — except at 8 bits, where the code
range is the one the real kernels of this CPU use (``0..127`` without VNNI, see
:func:`~fairq.compression.backends.int8.int8_ranges`); the range is the model's ``act_qrange``.
At 8 bits the program is the one real INT8 lowers, so simulated and real INT8 differ only by the kernels'
integer accumulation and requantization rounding.

The forward runs a copy of that graph with each weight dequantized once (a constant), each activation's
quantize → dequantize pair fused into one fake-quant expression with the same rounding (in place when nothing else
reads the tensor) and a ReLU/ReLU6 right before it dropped where the fake-quant's clamp implies it
(:func:`fused_fake_quant_graph`); ``reference_forward`` runs the converted graph itself.

Limits: the model must go through ``torch.export`` (non-strict, then strict) with example inputs — the
calibration batches — and everything the x86 quantizer does not annotate stays FP32 exactly as in real INT8
(e.g. attention's matmuls and softmax, LayerNorm, GELU inputs of ViT/BERT; embeddings). Activations are unsigned
per-tensor affine and weights signed symmetric, as the kernels take them: ``act_symmetric=True`` or
``symmetric=False`` need ``simulation="layer_input"``.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from fairq.compression.backends import int8
from fairq.compression.core.observers import qrange

ENGINE = "torchao-pt2e:X86InductorQuantizer->reference graph (fake-quant)"
SIMULATIONS = ("graph", "layer_input")

_QD = None


def _qd():
    global _QD
    if _QD is None:
        import torchao.quantization.pt2e  # noqa: F401  (registers the quantized_decomposed ops)

        _QD = torch.ops.quantized_decomposed
    return _QD


def act_qrange(bits: int) -> tuple[int, int]:
    """Unsigned activation codes of the simulated INT-``bits`` graph: the real kernels' range at 8 bits
    (``0..127`` on CPUs without VNNI), ``0..2^k-1`` below (no int16 saturation risk at k ≤ 7)."""
    if bits == 8:
        return 0, int8.int8_ranges()[0]
    return qrange(bits, signed=False)


class SimulatedProgram(int8.ProgramModel):
    """A simulated INT-k model held as the converted PT2E reference graph (see the module docstring).

    ``float_layers``: the source model's conv/linear layers the quantizer left FP32."""

    engine = ENGINE
    simulation = "graph"

    def __init__(self, *args, float_layers=(), **kwargs):
        super().__init__(*args, **kwargs)
        self.float_layers = list(float_layers)

    def build_runner(self) -> torch.fx.GraphModule:
        return fused_fake_quant_graph(self.program)

    def extra_repr(self) -> str:
        return (f"quantized layers={len(self.int8_layers)}, weight_bits={self.weight_bits}, "
                f"act_bits={self.act_bits}, act codes={self.act_qrange}, engine={self.engine}")

    def packed_weight_entries(self) -> list[tuple[list[str], int, int, int, bool]]:
        """``(state-dict keys of codes/scale/zero point, #codes, #channels, bits, symmetric)`` per layer."""
        out = []
        for entry in self.int8_layers.values():
            keys = [f"program.{v}" for kind, v in entry["args"][:3] if kind == "attr"]
            codes = int8._fetch(self.program, entry["args"][0][1])
            scale = entry["args"][1]
            channels = int8._fetch(self.program, scale[1]).numel() if scale[0] == "attr" else 1
            out.append((keys, codes.numel(), channels, self.weight_bits, True))
        return out


def _fake_quant(x: torch.Tensor, inv_scale: float, scale: float, lo: int, hi: int) -> torch.Tensor:
    """``quantize_per_tensor`` → ``dequantize_per_tensor`` in one expression: ``clamp(round(x / s), lo, hi) * s``
    with ``lo, hi = quant_min - zp, quant_max - zp`` (the same float ops and rounding as the decomposed pair)."""
    return torch.mul(x, inv_scale).round_().clamp_(lo, hi).mul_(scale)


def _fake_quant_(x: torch.Tensor, inv_scale: float, scale: float, lo: int, hi: int) -> torch.Tensor:
    """:func:`_fake_quant` in place, for a tensor nothing else reads (no allocation: memory-bound passes only)."""
    return x.mul_(inv_scale).round_().clamp_(lo, hi).mul_(scale)


_CLAMPS = {"relu": (0.0, float("inf")), "relu_": (0.0, float("inf"))}


def _clamp_range(node: torch.fx.Node) -> tuple[float, float] | None:
    """``(lo, hi)`` of a ReLU / hardtanh (ReLU6) node, else ``None``."""
    name = getattr(getattr(node.target, "_overloadpacket", None), "__name__", None)
    if name in _CLAMPS and len(node.args) == 1:
        return _CLAMPS[name]
    if name in ("hardtanh", "hardtanh_"):
        lo = node.args[1] if len(node.args) > 1 else -1.0
        hi = node.args[2] if len(node.args) > 2 else 1.0
        return float(lo), float(hi)
    return None


def _owned(node) -> bool:
    """Whether ``node``'s tensor is a fresh one that only its single user reads (so that user may overwrite it):
    produced by an op that returns a new tensor, or by an in-place op on such a tensor."""
    if not isinstance(node, torch.fx.Node) or node.op != "call_function" or len(node.users) != 1:
        return False
    schema = getattr(node.target, "_schema", None)
    if schema is None or len(schema.returns) != 1:
        return False
    alias = schema.returns[0].alias_info
    if alias is None:
        return True
    return bool(alias.is_write) and _owned(node.args[0])


def fused_fake_quant_graph(program: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """A graph computing ``program`` with less memory traffic: dequantized weights as constants, each activation's
    quantize → dequantize pairs one fake-quant (in place when nothing else reads the tensor), and a ReLU/ReLU6
    right before it dropped when the fake-quant's clamp already implies it."""
    qd = _qd()
    graph = copy.deepcopy(program.graph)
    gm = torch.fx.GraphModule(program, graph, class_name="SimulatedRunner")  # shares program's tensors
    weight_dequant = (qd.dequantize_per_channel.default, qd.dequantize_per_tensor.default)
    n_const = 0
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target not in weight_dequant:
            continue
        inputs = [a for a in node.args if isinstance(a, torch.fx.Node)]
        if not inputs or any(a.op != "get_attr" for a in inputs):
            continue  # an activation's dequantize, handled below
        args = [int8._fetch(gm, a.target) if isinstance(a, torch.fx.Node) else a for a in node.args]
        with torch.no_grad():
            value = node.target(*args, **node.kwargs)
        name = f"_dequantized_weight_{n_const}"
        n_const += 1
        gm.register_buffer(name, value, persistent=False)
        with graph.inserting_before(node):
            const = graph.get_attr(name)
        node.replace_all_uses_with(const)
        graph.erase_node(node)
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target != qd.quantize_per_tensor.default:
            continue
        x, scale, zero_point, qmin, qmax, _dtype = node.args
        if not (isinstance(scale, float) and isinstance(zero_point, int)):
            continue
        users = [u for u in node.users if u.target == qd.dequantize_per_tensor.default
                 and tuple(u.args[1:5]) == (scale, zero_point, qmin, qmax)]
        if not users:
            continue
        inv, lo, hi = 1.0 / scale, qmin - zero_point, qmax - zero_point
        clamp = _clamp_range(x) if isinstance(x, torch.fx.Node) and len(x.users) == 1 else None
        if clamp is not None:  # clamp(round(act(y) / s), lo, hi) == clamp(round(y / s), lo, hi) when act's range
            codes = torch.round(torch.tensor(clamp, dtype=torch.float32) * inv)  # covers [lo, hi] in codes
            if codes[0] <= lo and codes[1] >= hi:
                y = x.args[0]
                node.replace_input_with(x, y)
                graph.erase_node(x)
                x = y
        fn = _fake_quant_ if _owned(x) and set(x.users) == {node} else _fake_quant
        with graph.inserting_before(users[0]):
            fused = graph.call_function(fn, (x, inv, scale, lo, hi))
        for user in users:
            user.replace_all_uses_with(fused)
            graph.erase_node(user)
        if not node.users:
            graph.erase_node(node)
    graph.eliminate_dead_code()
    graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()
    return gm


def convert_static_simulated(model: nn.Module, config, calibration_data) -> SimulatedProgram:
    """Simulated INT-k static PTQ on the real backend's graph; a new model (``model`` is untouched).

    ``config``: a :class:`~fairq.compression.core.config.PTQConfig` (``weight_bits``, ``act_bits`` — ``None`` keeps
    activations FP32 —, ``per_channel``, ``symmetric``, ``observer``, ``percentile``, ``skip_modules``,
    ``calibration_batches``). ``calibration_data`` is required even for weights-only: its first batch is the
    example input ``torch.export`` traces with.
    """
    if not getattr(config, "symmetric", True):
        raise ValueError("simulation='graph' quantizes weights as the real kernels take them (signed, symmetric; "
                         "the x86 quantizer rejects affine weights); symmetric=False needs "
                         "simulation='layer_input'")
    if getattr(config, "act_symmetric", False):
        raise ValueError("simulation='graph' quantizes activations as the real kernels do (unsigned, per-tensor "
                         "affine); act_symmetric=True needs simulation='layer_input'")
    if calibration_data is None:
        raise ValueError("simulation='graph' needs calibration_data: it traces the model with torch.export on "
                         "the first batch (and calibrates activations on all of them)")
    w_bits, a_bits = config.weight_bits, config.act_bits
    a_range = act_qrange(a_bits) if a_bits is not None else None

    def quantizer(cfg, m):  # weights only: annotated as usual (the x86 quantizer needs activation specs), then
        # every activation quantize → dequantize pair is taken out of the converted graph (_strip_activations)
        return int8._quantizer(cfg, m, act_qrange=a_range or act_qrange(8), weight_qrange=qrange(w_bits, signed=True))

    try:
        work, program, spec, layers = int8.convert_pt2e_program(model, config, calibration_data, quantizer)
    except RuntimeError as err:
        if "could not trace" in str(err):
            raise RuntimeError(f"{err}\nsimulation='graph' needs a model torch.export can trace; "
                               "PTQConfig(simulation='layer_input') is the per-layer-input simulation "
                               "(BatchNorm unfolded, inputs of conv/linear fake-quantized), which is not what a "
                               "deployed model computes") from err
        raise
    if a_bits is None:
        _strip_activations(program)
    quantized = {name.split(":")[0] for name in layers}
    float_layers = [n for n, m in work.named_modules()
                    if n and isinstance(m, (nn.Conv2d, nn.Linear)) and n not in quantized]
    out = SimulatedProgram(program, spec, layers, config=getattr(model, "config", None), weight_bits=w_bits,
                           act_bits=a_bits, act_qrange=a_range, float_layers=float_layers)
    out.runner()  # build the fused graph now, so failures surface at conversion time
    return out.eval()


def _strip_activations(program: torch.fx.GraphModule) -> None:
    """Remove every activation quantize → dequantize pair (weights-only simulation)."""
    qd = _qd()
    graph = program.graph
    for node in list(graph.nodes):
        if node.op == "call_function" and node.target == qd.dequantize_per_tensor.default:
            q = node.args[0]
            if isinstance(q, torch.fx.Node) and q.target == qd.quantize_per_tensor.default:
                node.replace_all_uses_with(q.args[0])
                graph.erase_node(node)
                if not q.users:
                    graph.erase_node(q)
    graph.lint()
    program.recompile()


def program_layer_bits(qmodel: nn.Module) -> dict[str, int | None]:
    """``{layer: weight bits}`` of a graph-simulated model; conv/linear layers left FP32 map to ``None``."""
    out: dict[str, int | None] = {}
    for name, mod in qmodel.named_modules():
        if isinstance(mod, SimulatedProgram):
            prefix = f"{name}." if name else ""
            out.update({prefix + n: mod.weight_bits for n in mod.int8_layers})
            out.update({prefix + n: None for n in mod.float_layers})
    return out


def _programs(qmodel: nn.Module) -> list[SimulatedProgram]:
    found = [m for m in qmodel.modules() if isinstance(m, SimulatedProgram)]
    if not found:
        raise ValueError(f"{type(qmodel).__name__} holds no graph-simulated program (simulation='graph')")
    return found


def activation_quantizers(qmodel: nn.Module) -> dict[str, dict]:
    """``{tensor: {scale, zero_point, quant_min, quant_max}}`` of every per-tensor activation quantizer, keyed by
    the graph node that produces the quantized tensor (e.g. ``relu_3``, ``add_1``, ``x`` for the input)."""
    qd = _qd()
    out = {}
    for prog in _programs(qmodel):
        for node in prog.program.graph.nodes:
            if node.op == "call_function" and node.target == qd.quantize_per_tensor.default:
                _, scale, zp, qmin, qmax, _ = node.args
                out[node.args[0].name] = dict(scale=scale, zero_point=zp, quant_min=qmin, quant_max=qmax)
    return out


_RECORDING: dict[str, torch.Tensor] | None = None


def _record_codes(name: str, q: torch.Tensor) -> torch.Tensor:
    if _RECORDING is not None:
        seen = torch.unique(q)
        prev = _RECORDING.get(name)
        _RECORDING[name] = seen if prev is None else torch.unique(torch.cat([prev, seen]))
    return q


def activation_codes(qmodel: nn.Module, *args, **kwargs) -> dict[str, torch.Tensor]:
    """The distinct integer codes each activation quantizer emits on one input (run on the reference graph),
    keyed as :func:`activation_quantizers`. For the per-tensor activation audit: ≤ ``2^k`` codes per tensor."""
    global _RECORDING
    qd = _qd()
    codes: dict[str, torch.Tensor] = {}
    for prog in _programs(qmodel):
        graph = copy.deepcopy(prog.program.graph)
        for node in list(graph.nodes):
            if node.op == "call_function" and node.target == qd.quantize_per_tensor.default:
                with graph.inserting_after(node):
                    rec = graph.call_function(_record_codes, (node.args[0].name, node))
                node.replace_all_uses_with(rec, delete_user_cb=lambda user, rec=rec: user is not rec)
        probe = torch.fx.GraphModule(prog.program, graph)
        _RECORDING = codes
        try:
            with torch.no_grad():
                prog._call(probe, args, kwargs)  # a masked LM's program: every position asked for
        finally:
            _RECORDING = None
    return codes
