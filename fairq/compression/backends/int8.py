"""Real INT8 on CPU: static PTQ lowered to oneDNN int8 kernels, dynamic INT8 ``nn.Linear`` via torch.ao.

Why these paths (measured on this machine: AMD EPYC, AVX2 without VNNI, 2 threads, shared with other jobs;
timm ResNet-50, random init, batch 32 at 224 px; ``benchmarks/bench_int8.py`` reproduces the chosen one):

* torch.ao FX (``prepare_fx``/``convert_fx``, x86 qconfig; eager ``quantized::conv2d``): 2.7x FP32, 31 s to
  convert, and deprecated in torch 2.14.
* torchao PT2E (``torch.export`` → ``prepare_pt2e``/``convert_pt2e`` with ``X86InductorQuantizer``) then
  ``torch.compile``: 2.9x, but 180 s of inductor compilation — most of the 5-minute default run.
* torchao PT2E then torchao's x86 lowering (``torchao.quantization.pt2e.lowering.lower_pt2e_quantized_to_x86``:
  inductor's freezing passes rewrite every dequant → conv/linear → quant pattern into one oneDNN int8 op,
  ``onednn.qconv_pointwise`` / ``onednn.qlinear_pointwise``; no code generation, the graph runs eagerly):
  **chosen** — ResNet-50 3.5-3.9x and ViT-S/16 1.6-1.7x FP32 eager, 12-25 s to convert, 0.25x the size.
  :func:`_lower` is torchao's function with a dynamic batch (torchao's bakes the example's batch size in), plus
  three steps it lacks for eager use: view → reshape and an erf-form GELU (as inductor's ``freeze()`` does; else
  no ViT linear matches the int8 patterns) and ATen's quantize kernel for stand-alone activation quantization
  (the decomposed op took 62% of ViT-S's time). Without those ViT-S ran 0.83x.

Dynamic INT8: torch.ao ``quantize_dynamic`` (fbgemm ``quantized::linear_dynamic``) ran 1.38x FP32 on a 4-layer
BERT-base (batch 8 x 128 tokens); torchao's ``quantize_(Int8DynamicActivationInt8WeightConfig())`` ran 18x
*slower* than FP32 in eager mode on this CPU (no eager int8 CPU kernel), and ``quantize_dynamic`` needs no
tracing, so it works on any module tree (HF BERT included).

Schemes: weights int8 per-channel symmetric (axis 0), activations uint8 per-tensor affine — what oneDNN runs.
On CPUs without VNNI the activations use codes 0..127 (see :func:`int8_ranges`; fbgemm's dynamic linear does the
same): the static model carries it as ``act_qrange`` (:class:`Int8Model`), dynamic INT8 as :data:`DYNAMIC_ACT_QRANGE`.
"""
from __future__ import annotations

import copy
import fnmatch
import inspect
import warnings
from typing import Any

import torch
import torch.utils._pytree as pytree
from torch import nn
from tqdm.auto import tqdm

from fairq.compression.core.data import iter_model_inputs, model_device, real_tokens, token_mask
from fairq.compression.core.modules import tied_output_layers

ENGINE_STATIC = "torchao-pt2e:X86InductorQuantizer->onednn"
ENGINE_DYNAMIC = "torch.ao-quantize_dynamic:fbgemm"
#: the activation codes of dynamic INT8 (fbgemm's dynamic linear always uses ``reduce_range``)
DYNAMIC_ACT_QRANGE = (0, 127)

_QD = "quantized_decomposed"
_WEIGHT_DEQUANT = ("dequantize_per_channel", "dequantize_per_tensor")
_WEIGHTED_OPS = ("conv1d", "conv2d", "conv3d", "linear")


# ---------------------------------------------------------------- helpers shared by both paths
def _check_cpu(model: nn.Module) -> None:
    device = model_device(model)
    if device.type != "cpu":
        raise ValueError(f"real INT8 kernels run on CPU; the model is on {device} (call .cpu() first)")


def _skipped(name: str, patterns) -> bool:
    """fnmatch ``name`` against the patterns; a pattern also covers the module's children."""
    return any(fnmatch.fnmatchcase(name, p) or fnmatch.fnmatchcase(name, p + ".*") for p in patterns)


def _warn_unsupported(config) -> None:
    if not getattr(config, "symmetric", True):
        warnings.warn("real INT8 kernels need symmetric int8 weights: symmetric=False is ignored "
                      "(use backend='simulated' for affine weights)")
    if getattr(config, "act_symmetric", False):
        warnings.warn("real INT8 kernels take uint8 per-tensor affine activations: act_symmetric=True is ignored")


# ---------------------------------------------------------------- static PTQ (PT2E + oneDNN lowering)
def _observer_ctr(kind: str, percentile: float):
    """torchao PT2E observer class for activations (PT2E only accepts torchao's observer classes).

    Percentile and MSE reuse the range rules of the simulated path (:mod:`fairq.compression.core.observers`), so
    real and simulated INT8 calibrate identically.
    """
    from torchao.quantization.pt2e import HistogramObserver, MinMaxObserver

    from fairq.compression.core import observers as sim

    if kind == "minmax":
        return MinMaxObserver
    if kind == "histogram":
        class _KBitHistogram(HistogramObserver):  # search the range's real level count, as sim.KBitHistogramObserver
            def __init__(self, **kwargs):
                super().__init__(**kwargs)
                self.dst_nbins = self.quant_max - self.quant_min + 1

        return _KBitHistogram
    if kind == "percentile":
        class _Percentile(HistogramObserver):
            def __init__(self, **kwargs):
                super().__init__(**kwargs)
                self.percentile = float(percentile)

            calculate_qparams = sim.PercentileObserver.calculate_qparams

        return _Percentile
    if kind == "mse":
        class _MSE(HistogramObserver):
            def __init__(self, grid: int = 100, min_ratio: float = 0.05, **kwargs):
                super().__init__(**kwargs)
                self.grid, self.min_ratio = grid, min_ratio

            _mse = sim.MSEObserver._mse
            calculate_qparams = sim.MSEObserver.calculate_qparams

        return _MSE
    raise ValueError(f"unknown observer {kind!r}: expected minmax, percentile, mse or histogram")


def has_vnni() -> bool:
    """Whether this CPU has an int8 dot-product instruction (AVX512-VNNI, AVX-VNNI or AMX-INT8)."""
    caps = torch.cpu.get_capabilities()
    return any(caps.get(k, False) for k in ("avx512_vnni", "avx_vnni", "amx_int8"))


def int8_ranges() -> tuple[int, int, int]:
    """(activation quant_max, weight quant_min, weight quant_max) for the static INT8 kernels on this CPU.

    Without VNNI, x86 int8 kernels (oneDNN, as fbgemm) multiply with AVX2 ``vpmaddubsw``, whose int16 sums of two
    u8 x s8 products saturate (255 * 127 * 2 > 32767). Measured here: a K=384 oneDNN qlinear with full-range
    uint8 inputs was off by 9% of its output range, a random-init ViT-S by 22% against its own dequantized
    reference. As torch.ao's fbgemm/x86 qconfigs (``reduce_range=True``) and torchao's X86InductorQuantizer
    recommend for such CPUs, activations then use 7 bits (0..127) and weights keep all 8 bits.
    """
    return (255 if has_vnni() else 127), -128, 127


def _per_tensor_weight_observer():
    """Per-channel observer that gives every channel the whole tensor's range (per-tensor weights)."""
    from torchao.quantization.pt2e import PerChannelMinMaxObserver

    class _SharedRange(PerChannelMinMaxObserver):
        def calculate_qparams(self):
            lo, hi = self.min_val.min().expand_as(self.min_val), self.max_val.max().expand_as(self.max_val)
            return self._calculate_qparams(lo, hi)

    return _SharedRange


def _quantizer(config, model: nn.Module, act_qrange: tuple[int, int] | None = None,
               weight_qrange: tuple[int, int] | None = None):
    """X86InductorQuantizer: uint8 per-tensor affine activations, int8 symmetric weights, skips honoured.

    ``act_qrange`` / ``weight_qrange`` default to what the INT8 kernels of this CPU use (:func:`int8_ranges`);
    the deployment-faithful simulation (:mod:`fairq.compression.quant.graph_sim`) passes k-bit ranges instead.
    """
    from torchao.quantization.pt2e import PerChannelMinMaxObserver
    from torchao.quantization.pt2e.quantizer import QuantizationConfig, QuantizationSpec
    from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import X86InductorQuantizer

    eps = {"eps": 2**-12}  # torchao's x86 default
    act_qmax, w_qmin, w_qmax = int8_ranges()
    a_qmin, a_qmax = act_qrange or (0, act_qmax)
    w_qmin, w_qmax = weight_qrange or (w_qmin, w_qmax)
    act_cls = _observer_ctr(getattr(config, "observer", "minmax"), getattr(config, "percentile", 99.99))
    act = QuantizationSpec(dtype=torch.uint8, quant_min=a_qmin, quant_max=a_qmax, qscheme=torch.per_tensor_affine,
                           observer_or_fake_quant_ctr=act_cls.with_args(**eps))
    if getattr(config, "per_channel", True):
        w_obs = PerChannelMinMaxObserver
    else:  # one scale per tensor, written per channel: oneDNN's int8 ops take per-channel weight scales only
        w_obs = _per_tensor_weight_observer()
    weight = QuantizationSpec(dtype=torch.int8, quant_min=w_qmin, quant_max=w_qmax,
                              qscheme=torch.per_channel_symmetric, ch_axis=0,
                              observer_or_fake_quant_ctr=w_obs.with_args(**eps))
    quantizer = X86InductorQuantizer().set_global(QuantizationConfig(act, act, weight, None))
    patterns = tuple(getattr(config, "skip_modules", ()) or ())
    tied = set(tied_output_layers(model))  # kept FP32 and tied (see fairq.compression.core.modules)
    for name, _ in model.named_modules():
        if name and (_skipped(name, patterns) or name in tied):
            quantizer.set_module_name_qconfig(name, None)
    return quantizer


def _spec_of(args: tuple, kwargs: dict) -> dict:
    """Shapes/dtypes of the example inputs and which dims are dynamic (batch; batch and sequence for HF)."""
    def one(t, text):
        if not torch.is_tensor(t):
            raise TypeError(f"INT8 export needs tensor inputs, got {type(t).__name__}")
        dims = (0, 1) if text and t.dim() >= 2 else ((0,) if t.dim() >= 1 else ())
        return dict(shape=tuple(t.shape), dtype=t.dtype, dims=dims)

    return dict(args=[one(a, False) for a in args],
                kwargs={k: one(v, True) for k, v in kwargs.items() if v is not None})


def _example_from_spec(spec: dict) -> tuple[tuple, dict]:
    """Placeholder inputs of the recorded shapes (values are irrelevant to tracing a quantized graph)."""
    def make(s):
        return torch.ones(s["shape"], dtype=s["dtype"])

    return tuple(make(s) for s in spec["args"]), {k: make(s) for k, s in spec["kwargs"].items()}


def _dynamic_shapes(spec: dict):
    def dims(s):
        return {d: torch.export.Dim.DYNAMIC for d in s["dims"]} or None

    return ([dims(s) for s in spec["args"]], {k: dims(s) for k, s in spec["kwargs"].items()})


def _at_least_two(args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """First two samples of the batch, repeated if it has one (export specialises a size-1 dim to 1)."""
    def two(t):
        if not torch.is_tensor(t) or t.dim() == 0:
            return t
        t = t[:2]
        return torch.cat([t, t]) if t.shape[0] == 1 else t

    return tuple(two(a) for a in args), {k: two(v) for k, v in kwargs.items() if v is not None}


def _export(module: nn.Module, args: tuple, kwargs: dict, spec: dict, strict: bool = False
            ) -> torch.export.ExportedProgram:
    """``torch.export`` with the dynamic dims of ``spec`` (keyed by forward's parameter names)."""
    dyn_args, dyn_kwargs = _dynamic_shapes(spec)
    params = [p for p in inspect.signature(module.forward).parameters.values()
              if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if len(params) >= len(args):
        shapes: Any = {p.name: d for p, d in zip(params, dyn_args)}
        shapes.update(dyn_kwargs)
    elif not kwargs:  # forward(*args): one entry per positional input
        shapes = tuple(dyn_args)
    else:
        raise TypeError(f"cannot export {type(module).__name__}.forward(*args, **kwargs) with keyword inputs")
    with torch.no_grad():
        return torch.export.export(module, args, kwargs, dynamic_shapes=shapes, strict=strict)


def _lower(program: nn.Module, spec: dict) -> torch.fx.GraphModule:
    """torchao's ``lower_pt2e_quantized_to_x86`` with a dynamic batch (plus inductor's view→reshape step,
    without which linears on 3-D inputs, e.g. every ViT linear, stay FP32): the graph runs oneDNN int8 ops."""
    from torch._export.utils import _is_cia_op
    from torch._inductor.constant_folding import constant_fold
    from torch._inductor.fx_passes.freezing_patterns import freezing_passes
    from torch._inductor.fx_passes.post_grad import view_to_reshape

    args, kwargs = _example_from_spec(spec)
    decomp = torch.export.default_decompositions()
    for op in list(decomp):
        if not _is_cia_op(op):  # post-autograd graph: keep prim ops, as torchao does
            del decomp[op]
    # ... but spell GELU out as inductor does: the qlinear+GELU(+quant) fusion patterns match its erf form.
    decomp.update(torch._decomp.get_decompositions([torch.ops.aten.gelu]))
    with torch.inference_mode(False), torch.no_grad():
        gm = _export(program, args, kwargs, spec).run_decompositions(decomp).module()
        _transpose_as_permute(gm)
        view_to_reshape(gm)  # the qlinear patterns for >2-D inputs match reshape, as in inductor's freeze()
        freezing_passes(gm, pytree.tree_leaves((args, kwargs)))
        constant_fold(gm)
        _native_quantize(gm)
    return gm


def _quantize_uint8(x: torch.Tensor, scale: float, zero_point: int, quant_min: int, quant_max: int, dtype):
    """``quantized_decomposed.quantize_per_tensor`` to uint8 with ATen's vectorised quantize kernel."""
    with warnings.catch_warnings():  # quint8 tensors are deprecated, but ATen's kernel is the fast one here
        warnings.simplefilter("ignore", UserWarning)
        q = torch.quantize_per_tensor(x, scale, zero_point, torch.quint8).int_repr()  # keeps the memory format
    return q.clamp_(quant_min, quant_max) if (quant_min, quant_max) != (0, 255) else q


def _native_quantize(gm: torch.fx.GraphModule) -> None:
    """Run the stand-alone activation quantizations (e.g. LayerNorm → quant before a ViT linear) natively.

    Inductor would fuse them into generated code; run eagerly, the decomposed op is five elementwise passes
    (mul, round, add, clamp, cast) and took 62% of ViT-S's INT8 forward on this CPU.
    """
    target = torch.ops.quantized_decomposed.quantize_per_tensor.default
    for node in gm.graph.find_nodes(op="call_function", target=target):
        _, scale, zero_point, *_rest = node.args
        if node.args[-1] == torch.uint8 and isinstance(scale, float) and isinstance(zero_point, int):
            node.target = _quantize_uint8
    gm.recompile()


def _transpose_as_permute(gm: torch.fx.GraphModule) -> None:
    """aten.t → aten.permute([1, 0]) so the qlinear fusion pattern matches (as torchao's lowering does)."""
    graph = gm.graph
    for node in list(graph.nodes):
        if node.target == torch.ops.aten.t.default:
            with graph.inserting_before(node):
                perm = graph.call_function(torch.ops.aten.permute.default, args=(node.args[0], [1, 0]))
            node.replace_all_uses_with(perm)
            graph.erase_node(node)
    graph.lint()
    gm.recompile()


def _module_path(node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return node.name
    path = list(stack.values())[-1][0]
    return path[len("L['self']."):] if path.startswith("L['self'].") else path


def _weight_table(program: torch.fx.GraphModule) -> dict[str, dict]:
    """``{module name: how to dequantize its weight}`` for every conv/linear whose weight is int8 codes."""
    table: dict[str, dict] = {}
    for node in program.graph.nodes:
        op = getattr(node.target, "_overloadpacket", None)
        if node.op != "call_function" or op is None or op.__name__ not in _WEIGHTED_OPS or len(node.args) < 2:
            continue
        deq = node.args[1]
        if not isinstance(deq, torch.fx.Node) or getattr(deq.target, "namespace", None) != _QD:
            continue
        if deq.target._overloadpacket.__name__ not in _WEIGHT_DEQUANT:
            continue
        if not isinstance(deq.args[0], torch.fx.Node) or deq.args[0].op != "get_attr":
            continue
        args = [("attr", a.target) if isinstance(a, torch.fx.Node) else ("const", a) for a in deq.args]
        if any(isinstance(a, torch.fx.Node) and a.op != "get_attr" for a in deq.args):
            continue
        name, i = _module_path(node), 1
        while name in table:
            name, i = f"{_module_path(node)}:{i}", i + 1
        table[name] = dict(op=str(deq.target._overloadpacket.__name__), overload=deq.target._overloadname,
                           args=args, kwargs=dict(deq.kwargs))
    return table


def _resolve(root: nn.Module, target: str):
    *path, leaf = target.split(".")
    mod = root
    for p in path:
        mod = getattr(mod, p)
    return mod, leaf


def _tidy(program: torch.fx.GraphModule) -> None:
    """Drop FP32 tensors the quantized graph no longer reads; make the int8 constants buffers (→ state_dict)."""
    for node in list(program.graph.nodes):
        if node.op == "call_module" and node.target == "_guards_fn" and not node.users:
            program.graph.erase_node(node)  # export's input-shape guard: unpicklable; the lowered graph keeps its own
    used = {n.target for n in program.graph.nodes if n.op == "get_attr"}
    for name, _ in [*program.named_parameters(), *program.named_buffers()]:
        if name not in used:
            mod, leaf = _resolve(program, name)
            delattr(mod, leaf)
    owned = {n for n, _ in program.named_parameters()} | {n for n, _ in program.named_buffers()}
    for target in used - owned:
        mod, leaf = _resolve(program, target)
        value = getattr(mod, leaf)
        if torch.is_tensor(value):
            delattr(mod, leaf)
            mod.register_buffer(leaf, value)
    program.delete_all_unused_submodules()
    program.recompile()


def _as_program(graph: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """Tidy a converted graph into a plain, deep-copyable GraphModule."""
    _tidy(graph)
    program = torch.fx.GraphModule(graph, graph.graph, class_name="QuantizedProgram")
    program._tracer_cls = None
    return program


def _program_to_bytes(program: torch.fx.GraphModule, spec: dict) -> bytes:
    import io

    args, kwargs = _example_from_spec(spec)
    buf = io.BytesIO()
    torch.export.save(_export(program, args, kwargs, spec), buf)
    return buf.getvalue()


def _program_from_bytes(archive: bytes) -> torch.fx.GraphModule:
    import io

    import torchao.quantization.pt2e  # noqa: F401  (registers the quantized_decomposed ops the archive uses)

    return _as_program(torch.export.load(io.BytesIO(archive)).module())


class ProgramModel(nn.Module):
    """A model held as a converted PT2E program: the quantized reference graph (quantize → dequantize → FP32 op).

    ``program`` (a submodule, so ``state_dict`` holds its integer weights, qparams and remaining FP32 tensors)
    travels through pickling/deepcopy as a ``torch.export`` archive; the forward runs :meth:`build_runner`'s
    graph, built lazily (subclasses: oneDNN lowering for real INT8, a fused fake-quant graph for simulation).
    ``input_spec``: how the program was exported (the archive needs it); ``int8_layers``: ``{layer name: how to
    dequantize its weight}`` (the weight audit reads it); ``weight_bits`` / ``act_bits``: the widths it computes
    with; ``act_qrange``: the unsigned activation codes it uses (None: activations stay FP32); ``engine``: what
    runs it; ``simulation``: ``"graph"`` for the simulation, None for real kernels.
    ``config``: the source model's (HF) config, kept so that code reading the model's limits — e.g. the text
    scorers' ``max_position_embeddings`` — sees the same model it would have seen before conversion.
    """

    engine: str | None = None
    simulation: str | None = None

    def __init__(self, program: torch.fx.GraphModule, spec: dict, layers: dict[str, dict], config=None, *,
                 weight_bits: int = 8, act_bits: int | None = 8, act_qrange: tuple[int, int] | None = None):
        super().__init__()
        self.program = program
        self.input_spec = spec
        self.int8_layers = layers
        self.weight_bits, self.act_bits, self.act_qrange = weight_bits, act_bits, act_qrange
        if config is not None:
            self.config = config
        self.__dict__["_runner"] = None

    def build_runner(self) -> torch.fx.GraphModule:
        return self.program

    def runner(self) -> torch.fx.GraphModule:
        """The graph the forward runs (built on first use)."""
        if self.__dict__.get("_runner") is None:
            self.__dict__["_runner"] = self.build_runner()
        return self.__dict__["_runner"]

    @property
    def gathers(self) -> bool:
        """Whether the program is a masked LM's :class:`GatheredMaskedLM` (its head at given positions only)."""
        return "positions" in self.input_spec.get("kwargs", {})

    def _call(self, graph, args, kwargs):
        if self.gathers and "positions" not in kwargs:  # called as the model: every position, [B, T, vocab]
            ids = kwargs["input_ids"]
            b, t = ids.shape[:2]
            out = graph(*args, positions=torch.arange(b * t, device=ids.device), **kwargs)
            return out.reshape(b, t, -1)
        return graph(*args, **kwargs)

    def forward(self, *args, **kwargs):
        with torch.no_grad():  # inference only (the oneDNN graph also refuses to record autograd)
            return self._call(self.runner(), args, kwargs)

    def gathered_logits(self, input_ids, attention_mask, rows: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """Vocabulary logits at ``(rows, pos)`` of the batch, the head run there only (a :attr:`gathers` program;
        what :class:`fairq.text.engine.MaskedLMEngine` asks for)."""
        flat = rows * input_ids.shape[1] + pos
        with torch.no_grad():
            return self.runner()(input_ids=input_ids, attention_mask=attention_mask, positions=flat)

    def reference_forward(self, *args, **kwargs):
        """The quantized computation in FP32 ops (dequant → op → quant), exactly as converted."""
        with torch.no_grad():
            return self._call(self.program, args, kwargs)

    def train(self, mode: bool = True):
        # Exported graphs refuse train()/eval(); this model is inference-only, so only the flags change.
        for m in self.modules():
            m.training = mode
        return self

    def __getstate__(self):
        # Pickling a GraphModule re-traces its code, which would bake the int8 weights' dequantization into FP32
        # constants; the program travels as a torch.export archive instead (graph + int8 tensors, exactly).
        state = {k: v for k, v in self.__dict__.items() if k != "_runner"}
        state["_modules"] = {k: v for k, v in self._modules.items() if k != "program"}
        # as a uint8 tensor: torch.save writes tensors raw, while protocol-2 pickling inflates bytes ~1.3x
        archive = _program_to_bytes(self.program, self.input_spec)
        state["_program_archive"] = torch.frombuffer(bytearray(archive), dtype=torch.uint8)
        return state

    def __setstate__(self, state):
        archive = state.pop("_program_archive").numpy().tobytes()
        super().__setstate__(state)
        self.__dict__["_runner"] = None
        self.program = _program_from_bytes(archive)

    def __deepcopy__(self, memo):
        new = type(self).__new__(type(self))
        memo[id(self)] = new
        new.__dict__.update(copy.deepcopy({k: v for k, v in self.__dict__.items() if k != "_runner"}, memo))
        new.__dict__["_runner"] = None
        return new

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self.__dict__["_runner"] = None  # the runner may hold constants derived from the old tensors


class Int8Model(ProgramModel):
    """A statically quantized model running real INT8 oneDNN kernels on CPU.

    The forward runs the program's oneDNN lowering, built at conversion and rebuilt lazily after
    unpickling/deepcopy (prepacked oneDNN weights cannot be pickled).
    """

    engine = ENGINE_STATIC

    def build_runner(self) -> torch.fx.GraphModule:
        return _lower(self.program, self.input_spec)

    def lower(self) -> torch.fx.GraphModule:
        """The oneDNN graph (built on first use)."""
        return self.runner()

    def extra_repr(self) -> str:
        return f"int8 layers={len(self.int8_layers)}, engine={self.engine}"


def _check_lowered(qmodel: Int8Model) -> None:
    """Warn when some quantized layers found no oneDNN int8 op (they would run FP32 on dequantized weights)."""
    n_int8 = sum(1 for n in qmodel.lower().graph.nodes
                 if n.op == "call_function" and str(n.target).startswith(("onednn.qconv", "onednn.qlinear")))
    if n_int8 < len(qmodel.int8_layers):
        warnings.warn(f"only {n_int8} of {len(qmodel.int8_layers)} quantized layers run oneDNN int8 kernels; "
                      "the rest compute in FP32 on their dequantized int8 weights")


def _same_pad_convs_as_conv2d(gm: torch.fx.GraphModule) -> None:
    """Let the quantizer see timm ``Conv2dSame`` convs (run-time pad, then a plain conv) as ``nn.Conv2d``.

    A non-strict export has no ``source_fn_stack``; torch then groups ops by the innermost ``nn_module_stack``
    class *name*, which matches ``torch.nn.modules.conv.Conv2d`` exactly and so missed the tf_* EfficientNets'
    stem and strided depthwise convs (left FP32). Only the class recorded for their ``aten.conv2d`` changes.
    """
    for node in gm.graph.nodes:
        if node.op != "call_function" or node.target != torch.ops.aten.conv2d.default:
            continue
        stack = node.meta.get("nn_module_stack")
        if not stack:
            continue
        key = list(stack)[-1]
        path, cls = stack[key]
        name = cls if isinstance(cls, str) else f"{cls.__module__}.{cls.__qualname__}"
        if name.startswith("timm.") and name.endswith(".Conv2dSame"):
            stack[key] = (path, "torch.nn.modules.conv.Conv2d" if isinstance(cls, str) else nn.Conv2d)


def _warn_float_layers(model: nn.Module, layers: dict, config) -> None:
    """Name the float model's conv/linear layers that did not become int8 (other than skipped ones)."""
    patterns = tuple(getattr(config, "skip_modules", ()) or ())
    quantized = {name.split(":")[0] for name in layers}
    tied = set(tied_output_layers(model))
    left = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear)) and n
            and n not in quantized and not _skipped(n, patterns) and n not in tied]
    if left:
        warnings.warn(f"{len(left)} conv/linear layer(s) stay FP32 in the INT8 model (the quantizer did not "
                      f"annotate them): {', '.join(left[:10])}{' …' if len(left) > 10 else ''}", stacklevel=3)


def _observe_real_tokens(prepared: nn.Module) -> list[nn.Module]:
    """Let the activation observers of a prepared PT2E graph skip a text batch's ``[PAD]`` positions: each
    observer sees :func:`~fairq.compression.core.data.real_tokens` of its input (``[B, T, d]`` activations of a padded
    batch lose their padding rows; weights and other shapes are observed as they are) and passes its input on
    unchanged. Returns the observers changed (``del mod.forward`` restores one)."""
    from torch.ao.quantization.observer import ObserverBase as AoObserver

    try:
        from torchao.quantization.pt2e.observer import ObserverBase as TaoObserver
    except ImportError:  # pragma: no cover - older torchao
        TaoObserver = AoObserver
    changed = []
    for mod in prepared.modules():
        if isinstance(mod, (AoObserver, TaoObserver)):
            observe = mod.forward

            def forward(x, _observe=observe):
                _observe(real_tokens(x) if torch.is_tensor(x) else x)
                return x

            mod.forward = forward
            changed.append(mod)
    return changed


class GatheredMaskedLM(nn.Module):
    """What is exported of a masked LM (a model :func:`fairq.batches.mlm_parts` splits into encoder and MLM head):
    ``forward(input_ids, attention_mask, positions)`` runs the encoder and then the head on the hidden states at
    the flat ``positions`` (``row * seq_len + column``) only, returning ``[len(positions), vocab]`` logits.

    Why: the head ends in the ``hidden × vocabulary`` projection (30,522 outputs for BERT's vocabulary), and a
    scorer needs it at the ``[MASK]`` positions only; a program of the whole model computed it at every token —
    for a small BERT most of the forward's work, which made graph-simulated text cells ~10× slower to score than
    the other cells. What is quantized is unchanged: the wrapper holds the model's own children under their own
    names (layer names, ``skip_modules`` and the tied decoder are as in the model), and the calibration passes the
    real (non-``[PAD]``) tokens as ``positions``, so the head's input observer sees exactly the tokens it saw
    before (:func:`~fairq.compression.core.data.real_tokens`). :class:`ProgramModel` completes the inputs: called
    as the model (``input_ids``, ``attention_mask``) it asks for every position and returns ``[B, T, vocab]``."""

    def __init__(self, model: nn.Module, encoder: str, head: str):
        super().__init__()
        for name, child in model.named_children():
            self.add_module(name, child)
        self.encoder_path, self.head_path = encoder, head  # looked up at forward: one name per module

    @classmethod
    def of(cls, model: nn.Module) -> nn.Module:
        """The gathered view of ``model``, or ``model`` itself when it is not a split masked LM."""
        from fairq.batches import mlm_parts

        encoder, head = mlm_parts(model)
        if encoder is None:
            return model
        names = {id(m): n for n, m in model.named_modules()}
        return cls(model, names[id(encoder)], names[id(head)])

    @staticmethod
    def real_positions(kwargs: dict) -> dict:
        """``kwargs`` plus ``positions``: the flat indices of the batch's real tokens (``attention_mask``)."""
        mask = kwargs.get("attention_mask")
        ids = kwargs["input_ids"]
        flat = (torch.ones_like(ids) if mask is None else mask).reshape(-1)
        return {**kwargs, "positions": flat.nonzero().reshape(-1)}

    def forward(self, input_ids, attention_mask, positions):
        from fairq.batches import hidden_states, logits_of

        encoder = self.get_submodule(self.encoder_path)
        hidden = hidden_states(encoder(input_ids=input_ids, attention_mask=attention_mask))
        flat = hidden.reshape(-1, hidden.shape[-1]).index_select(0, positions)
        return logits_of(self.get_submodule(self.head_path)(flat))


def convert_pt2e_program(model: nn.Module, config, calibration_data, quantizer_fn
                         ) -> tuple[nn.Module, torch.fx.GraphModule, dict, dict]:
    """Export a copy of ``model``, annotate it with ``quantizer_fn(config, model)``, calibrate, convert.

    Returns ``(float copy, converted program, input spec, weight table)``; the program is the quantized
    reference graph (BatchNorm folded into the convs, quantize → dequantize pairs where tensors are produced),
    not yet lowered to kernels. Shared by real INT8 and the deployment-faithful simulation, so both compute
    the same graph from the same calibration.
    """
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    if calibration_data is None:
        raise ValueError("static quantization needs calibration_data (an iterable of input batches)")
    batches = list(iter_model_inputs(calibration_data, limit=getattr(config, "calibration_batches", None),
                                     device=model_device(model)))
    if not batches:
        raise ValueError("calibration data yielded no batches")
    work = copy.deepcopy(model).eval()
    target = GatheredMaskedLM.of(work)  # a masked LM: its head runs at the positions asked for (class docstring)
    args, kwargs = _at_least_two(*batches[0])
    if target is not work:
        kwargs = GatheredMaskedLM.real_positions(kwargs)
    spec = _spec_of(args, kwargs)
    errors = []
    # Non-strict export first (fast, traces HF models); its graphs lack the per-call ``source_fn_stack`` that the
    # quantizer groups ops by, which breaks on a module called twice (torchvision's ResNet reuses ``self.relu``):
    # dynamo's strict export records it.
    for strict in (False, True):
        try:
            graph = _export(target, args, kwargs, spec, strict=strict).module()
            _same_pad_convs_as_conv2d(graph)
            prepared = prepare_pt2e(graph, quantizer_fn(config, work))
            break
        except Exception as err:  # noqa: BLE001 - reported below if both tracers fail
            errors.append(f"{'strict' if strict else 'non-strict'} export: {type(err).__name__}: {err}")
    else:
        raise RuntimeError(f"could not trace and annotate {type(model).__name__} with torch.export + PT2E; "
                           + " | ".join(e[:500] for e in errors))
    observers = _observe_real_tokens(prepared)
    with torch.no_grad():
        for a, k in tqdm(batches, desc="PT2E calibration", leave=False):
            with token_mask(k):
                prepared(*a, **(GatheredMaskedLM.real_positions(k) if target is not work else k))
    for mod in observers:
        del mod.forward  # back to the class's own forward
    program = convert_pt2e(prepared)
    layers = _weight_table(program)
    if not layers:
        raise RuntimeError(f"no conv/linear layer of {type(model).__name__} was quantized")
    _warn_float_layers(work, layers, config)
    return work, _as_program(program), spec, layers


def convert_static_int8(model: nn.Module, config, calibration_data) -> nn.Module:
    """Static INT8 PTQ: a new model (the input is untouched) running oneDNN int8 conv/linear kernels on CPU.

    ``config``: read by duck typing — ``per_channel``, ``observer``, ``percentile``, ``skip_modules``,
    ``calibration_batches``. ``calibration_data``: batches as
    :func:`fairq.compression.core.data.iter_model_inputs` accepts; the first fixes the non-batch input shape.
    """
    _check_cpu(model)
    _warn_unsupported(config)
    if calibration_data is None:
        raise ValueError("static INT8 quantization needs calibration_data (an iterable of input batches)")
    _, program, spec, layers = convert_pt2e_program(model, config, calibration_data,
                                                    lambda cfg, m: _quantizer(cfg, m))
    out = Int8Model(program, spec, layers, config=getattr(model, "config", None),
                    act_qrange=(0, int8_ranges()[0]))  # uint8 codes the activations really use (0..127 = reduce_range)
    _check_lowered(out)  # builds the oneDNN graph now, so failures surface at conversion time
    return out.eval()


# ---------------------------------------------------------------- dynamic INT8 (torch.ao, fbgemm)
def convert_dynamic_int8(model: nn.Module, config) -> nn.Module:
    """Dynamic INT8 ``nn.Linear`` layers (int8 weights, each batch's activations quantized at run time).

    ``config``: ``per_channel`` and ``skip_modules`` are read by duck typing. Returns a new model (its activation
    codes: :data:`DYNAMIC_ACT_QRANGE`; its engine: :data:`ENGINE_DYNAMIC`).
    """
    from torch.ao.quantization import default_dynamic_qconfig, per_channel_dynamic_qconfig, quantize_dynamic

    _check_cpu(model)
    _warn_unsupported(config)
    patterns = tuple(getattr(config, "skip_modules", ()) or ())
    qconfig = per_channel_dynamic_qconfig if getattr(config, "per_channel", True) else default_dynamic_qconfig
    work = copy.deepcopy(model).eval()
    tied = set(tied_output_layers(work))  # kept FP32 and tied (see fairq.compression.core.modules)
    names = [n for n, m in work.named_modules() if type(m) is nn.Linear and not _skipped(n, patterns)
             and n not in tied]
    if not names:
        raise ValueError(f"{type(model).__name__} has no nn.Linear layer to quantize dynamically "
                         f"(skip_modules={patterns})")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.ao eager quantization: see module docstring
        warnings.filterwarnings("ignore", "torch.quantize_per", UserWarning)  # its quint8 tensors, likewise
        out = quantize_dynamic(work, {n: qconfig for n in names}, dtype=torch.qint8, inplace=False)
    return out


# ---------------------------------------------------------------- weight audit
def _dequant(program: nn.Module, entry: dict) -> torch.Tensor:
    op = getattr(getattr(torch.ops, _QD), entry["op"])
    op = getattr(op, entry["overload"])
    args = [_fetch(program, v) if kind == "attr" else v for kind, v in entry["args"]]
    return op(*args, **entry["kwargs"])


def _fetch(root: nn.Module, target: str):
    mod, leaf = _resolve(root, target)
    return getattr(mod, leaf)


def int8_effective_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """``{layer name: float weight}`` dequantized from the integer codes the model computes with.

    Static models (real INT8, or the graph simulation's program): the conv/linear weights as quantized (BatchNorm
    already folded in). Dynamic models: every ``DynamicQuantizedLinear``'s weight.
    """
    from torch.ao.nn.quantized import dynamic as nnqd

    out: dict[str, torch.Tensor] = {}
    for name, mod in model.named_modules():
        if isinstance(mod, ProgramModel):
            prefix = f"{name}." if name else ""
            with torch.no_grad():
                for layer, entry in mod.int8_layers.items():
                    out[prefix + layer] = _dequant(mod.program, entry).detach().clone()
        elif isinstance(mod, nnqd.Linear):
            out[name] = mod.weight().dequantize()
    if not out:
        raise ValueError(f"{type(model).__name__} holds no real INT8 layers "
                         "(was it converted by fairq's int8 backend?)")
    return out
