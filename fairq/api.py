"""User-facing helpers with the names of the Beyond-Naive-Quantization study, built on fairq's own code.

- :func:`compute_fairness_metrics` evaluates one model (``fairq.evaluate.predict_frame``) and scores it with
  ``fairq.metrics.fairness_metrics`` (optionally with stratified-bootstrap CIs).
- :func:`compare_quantization_methods` quantizes a model several ways (``fairq.compression.apply_quantization``),
  evaluates every variant on the same samples and compares each with the full-precision model using the analysis
  package's statistics (paired bootstrap CIs, McNemar / paired permutation tests, Benjamini–Hochberg, flips).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = ["compute_fairness_metrics", "compare_quantization_methods", "QuantizationComparison"]

_HEADLINE = ("accuracy", "worst_group_accuracy", "demographic_parity_difference", "equalized_odds_difference")


# ------------------------------------------------------------------------------------------------ inputs
def _resolve(loader, sensitive_attr, sensitive_names, sensitive_levels):
    """``(loader, names of the batch's sensitive columns, levels, attributes to score)``.

    A datamodule (anything with ``test_dataloader`` and ``sensitive_names``) supplies its test loader, names and
    levels. Otherwise ``sensitive_names`` gives the column order of ``batch["sensitive"]`` (a single column may be
    named by ``sensitive_attr`` alone); levels default to the integer codes.
    """
    if hasattr(loader, "test_dataloader") and hasattr(loader, "sensitive_names"):
        dm = loader
        if sensitive_names is None:
            sensitive_names = list(dm.sensitive_names)
        if sensitive_levels is None:
            sensitive_levels = getattr(dm, "sensitive_levels", None)
        loader = dm.test_dataloader()
    wanted = [sensitive_attr] if isinstance(sensitive_attr, str) else (list(sensitive_attr) if sensitive_attr
                                                                        else None)
    if sensitive_names is None:
        if wanted is None or len(wanted) != 1:
            raise ValueError("name the columns of batch['sensitive']: pass sensitive_names=[...] (in column order) "
                             "or a fairq datamodule instead of a loader")
        sensitive_names = wanted
    sensitive_names = list(sensitive_names)
    unknown = [a for a in (wanted or []) if a not in sensitive_names]
    if unknown:
        raise ValueError(f"sensitive attribute(s) {unknown} not among the batch's columns {sensitive_names}")
    return loader, sensitive_names, sensitive_levels, (wanted or sensitive_names)


class _DictBatches:
    """Re-iterable view of a loader as fairq dict batches (``image, target, sensitive, sample_id``).

    Tuple/list batches are read as ``(input, target, sensitive)``; missing sample ids become running indices.
    """

    def __init__(self, loader: Iterable):
        self.loader = loader

    def __iter__(self):
        offset = 0
        for batch in self.loader:
            if isinstance(batch, Mapping):
                batch = dict(batch)
            elif isinstance(batch, (tuple, list)) and len(batch) >= 3:
                batch = {"image": batch[0], "target": batch[1], "sensitive": batch[2]}
            else:
                raise ValueError("batches must be fairq dicts {'image', 'target', 'sensitive', 'sample_id'} or "
                                 f"(input, target, sensitive) tuples; got {type(batch).__name__}")
            missing = [k for k in ("image", "target", "sensitive") if k not in batch]
            if missing:
                raise ValueError(f"batch lacks {missing}; expected keys image, target, sensitive[, sample_id]")
            n = len(batch["target"])
            if batch["sensitive"].ndim == 1:
                batch["sensitive"] = batch["sensitive"].reshape(-1, 1)
            if "sample_id" not in batch:
                batch["sample_id"] = [str(i) for i in range(offset, offset + n)]
            offset += n
            yield batch


def _levels(sensitive_names, sensitive_levels, max_codes: int = 4096):
    """Level labels per attribute; the integer codes as strings when none are given."""
    levels = dict(sensitive_levels or {})
    for a in sensitive_names:
        if a not in levels:
            levels[a] = [str(i) for i in range(max_codes)]
    return levels


def _predict(model, batches, names, levels, progress, desc) -> pd.DataFrame:
    from fairq.evaluate import predict_frame

    return predict_frame(model, batches, sensitive_names=names, sensitive_levels=levels, progress=progress,
                         desc=desc)


# ------------------------------------------------------------------------------------------------ one model
def compute_fairness_metrics(model, loader, sensitive_attr: str | Sequence[str] | None = None, *,
                             sensitive_names: Sequence[str] | None = None,
                             sensitive_levels: Mapping[str, Sequence[str]] | None = None, pos_label=1,
                             min_group_size: int | None = None, n_bootstrap: int = 0, seed: int = 0,
                             progress: bool = False) -> dict:
    """Evaluate ``model`` on ``loader`` and return :func:`fairq.metrics.fairness_metrics` of its predictions.

    Parameters
    ----------
    model : nn.Module
        Returns logits (or an object with ``.logits``) for ``batch["image"]``.
    loader : DataLoader, iterable of batches, or a fairq datamodule (its test split is used)
        fairq dict batches, or ``(input, target, sensitive)`` tuples.
    sensitive_attr : str or list of str, optional
        Attribute(s) to group by (several = intersectional groups). Default: all of ``sensitive_names``.
    sensitive_names : list of str, optional
        Column names of ``batch["sensitive"]`` in order (taken from the datamodule when one is given).
    sensitive_levels : dict, optional
        Level labels per attribute (default: the integer codes).
    pos_label, min_group_size
        As in :func:`fairq.metrics.fairness_metrics`.
    n_bootstrap : int, default 0
        When > 0, adds ``"ci"``: stratified-bootstrap 95% CIs of every metric (:func:`fairq.metrics.bootstrap_ci`).
    seed : int
        Bootstrap seed.

    Returns
    -------
    dict
        The scalar metrics, ``per_group`` (DataFrame), ``predictions`` (the per-sample frame) and, with
        ``n_bootstrap``, ``ci``.
    """
    from fairq.metrics import DEFAULT_MIN_GROUP_SIZE, bootstrap_ci, fairness_metrics

    loader, names, levels, attrs = _resolve(loader, sensitive_attr, sensitive_names, sensitive_levels)
    frame = _predict(model, _DictBatches(loader), names, _levels(names, levels), progress, "evaluate")
    mgs = DEFAULT_MIN_GROUP_SIZE if min_group_size is None else min_group_size
    out = fairness_metrics(frame["y_true"], frame["y_pred"], frame[attrs], pos_label=pos_label, min_group_size=mgs)
    out["predictions"] = frame
    if n_bootstrap:
        out["ci"] = bootstrap_ci(frame["y_true"], frame["y_pred"], frame[attrs], n_resamples=n_bootstrap, seed=seed,
                                 pos_label=pos_label, min_group_size=mgs)
    return out


# ------------------------------------------------------------------------------------------------ comparison
class QuantizationComparison:
    """Result of :func:`compare_quantization_methods`.

    Attributes
    ----------
    deltas : DataFrame
        The analysis ``deltas.csv`` layout: every metric per method × group scope with CIs, paired tests and
        BH-adjusted p-values (across all tests of this comparison).
    flips : DataFrame
        The analysis ``flips.csv`` layout (per method × group).
    predictions : dict
        Method label → per-sample predictions frame.
    models : dict
        Method label → the quantized model.
    """

    def __init__(self, deltas: pd.DataFrame, flips: pd.DataFrame, predictions: dict, models: dict,
                 sizes: dict, attributes: str):
        self.deltas, self.flips, self.predictions, self.models = deltas, flips, predictions, models
        self.sizes, self.attributes = sizes, attributes

    def to_frame(self) -> pd.DataFrame:
        """One row per method (baseline first): every overall metric, its 95% CI, and for the headline metrics
        the delta vs the baseline with its CI and BH-adjusted p; plus ``size_mb`` and ``flip_rate``."""
        d = self.deltas[(self.deltas["attributes"] == self.attributes) & (self.deltas["group"] == "all")]
        rows = []
        for label, f in d.groupby("cell", sort=False):
            r = {"method": label}
            for _, x in f.iterrows():
                m = x["metric"]
                r[m] = x["value"]
                r[f"{m}_ci_low"], r[f"{m}_ci_high"] = x["value_ci_low"], x["value_ci_high"]
                if m in _HEADLINE and not pd.isna(x["delta"]):
                    r[f"{m}_delta"] = x["delta"]
                    r[f"{m}_delta_ci_low"], r[f"{m}_delta_ci_high"] = x["ci_low"], x["ci_high"]
                    r[f"{m}_p_adjusted"] = x["p_adjusted"]
            r["size_mb"] = self.sizes.get(label, np.nan)
            fl = self.flips[(self.flips["cell"] == label) & (self.flips["group"] == "all")]
            r["flip_rate"] = fl["flip_rate"].iloc[0] if len(fl) else (0.0 if label == "baseline" else np.nan)
            rows.append(r)
        return pd.DataFrame(rows).set_index("method")

    def save_to_csv(self, path) -> Path:
        """Write :meth:`to_frame` to ``path`` (CSV); returns the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.to_frame().to_csv(path)
        return path

    def plot_comparison(self, metrics: Sequence[str] = _HEADLINE, path=None):
        """Bar chart per metric across methods with 95% bootstrap CIs; returns the matplotlib Figure.

        Saved to ``path`` (any matplotlib format) when given.
        """
        import matplotlib

        if path is not None:
            matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        frame = self.to_frame()
        fig, axes = plt.subplots(1, len(metrics), figsize=(3.2 * len(metrics) + 1, 3.8), squeeze=False,
                                 layout="constrained")
        x = np.arange(len(frame))
        for ax, m in zip(axes.ravel(), metrics):
            v = frame[m].to_numpy(float)
            err = np.vstack([v - frame[f"{m}_ci_low"].to_numpy(float), frame[f"{m}_ci_high"].to_numpy(float) - v])
            ax.bar(x, v, yerr=np.nan_to_num(err), capsize=3, color=[f"C{i}" for i in range(len(frame))])
            ax.set_xticks(x, frame.index, rotation=35, ha="right", fontsize=8)
            ax.set_title(m.replace("_", " "), fontsize=9)
        fig.suptitle("quantization methods vs full precision (95% bootstrap CIs)")
        if path is not None:
            fig.savefig(path, dpi=110)
        return fig


def _method_specs(methods, bit_width) -> list[tuple[str, object]]:
    """Normalise ``methods`` to ``[(label, spec)]``; spec = nn.Module or kwargs of ``apply_quantization``."""
    if isinstance(methods, (str, tuple)):
        methods = [methods]
    items = list(methods.items()) if isinstance(methods, Mapping) else [(None, m) for m in methods]
    out = []
    for label, m in items:
        if hasattr(m, "forward") and callable(m):          # an already compressed model
            spec = m
        elif isinstance(m, str):
            spec = {"method": m, "bit_width": bit_width}
        elif isinstance(m, tuple) and len(m) == 2:
            spec = {"method": m[0], "bit_width": m[1]}
        elif isinstance(m, Mapping) and "method" in m:
            spec = {"bit_width": bit_width, **m}
        else:
            raise ValueError(f"cannot read method spec {m!r}: give a method name, (method, bits), "
                             "{'method': ..., 'bit_width': ..., **options} or a model")
        if label is None:
            if not isinstance(spec, Mapping):
                raise ValueError("give models in a dict {label: model} so they have names")
            label = f"{spec['method']}_int{spec['bit_width']}" if spec.get("bit_width") else spec["method"]
        out.append((str(label), spec))
    labels = [lab for lab, _ in out]
    dup = {lab for lab in labels if labels.count(lab) > 1}
    if dup or "baseline" in labels:
        raise ValueError(f"method labels must be unique and not 'baseline'; got {labels}")
    return out


def compare_quantization_methods(model, methods, test_loader, sensitive_attrs: str | Sequence[str] | None = None, *,
                                 calibration_data=None, bit_width: int = 8,
                                 sensitive_names: Sequence[str] | None = None,
                                 sensitive_levels: Mapping[str, Sequence[str]] | None = None,
                                 n_bootstrap: int = 1000, seed: int = 0, min_group_size: int | None = None,
                                 progress: bool = False) -> QuantizationComparison:
    """Quantize ``model`` with each of ``methods`` and compare every variant with ``model`` on the same samples.

    Parameters
    ----------
    model : nn.Module
        The full-precision model (the baseline).
    methods : list or dict
        Each entry: a method name of ``fairq.compression.METHODS`` (at ``bit_width``), a ``(method, bits)`` pair,
        a dict ``{"method": ..., "bit_width": ..., **options}`` for ``apply_quantization``, or — in a dict
        ``{label: model}`` — an already compressed model. Dict keys are the labels.
    test_loader : DataLoader, iterable of batches, or a fairq datamodule
        As in :func:`compute_fairness_metrics`.
    sensitive_attrs : str or list of str, optional
        Attributes to group by (several = intersectional plus each alone). Default: all.
    calibration_data : iterable, optional
        Calibration batches for the methods that need them (static PTQ); never taken from the test set.
    bit_width : int, default 8
        Bits of the entries given by method name only.
    n_bootstrap : int
        Bootstrap resamples and permutations of the tests.

    Returns
    -------
    QuantizationComparison
        ``.to_frame()``, ``.save_to_csv(path)``, ``.plot_comparison()``, plus ``deltas`` / ``flips`` tables.
    """
    from fairq.analysis.deltas import compute_deltas
    from fairq.analysis.flips import compute_flips
    from fairq.analysis.load import store_from_frames
    from fairq.analysis.stats import benjamini_hochberg
    from fairq.compression import apply_quantization, model_size_mb
    from fairq.metrics import DEFAULT_MIN_GROUP_SIZE

    specs = _method_specs(methods, bit_width)
    loader, names, levels, attrs = _resolve(test_loader, sensitive_attrs, sensitive_names, sensitive_levels)
    batches = _DictBatches(loader)
    lv = _levels(names, levels)
    frames = {"baseline": _predict(model, batches, names, lv, progress, "baseline")}
    models, sizes = {}, {"baseline": model_size_mb(model)}
    for label, spec in specs:
        if isinstance(spec, Mapping):
            opts = {k: v for k, v in spec.items() if k not in ("method", "bit_width")}
            qmodel = apply_quantization(model, spec["method"], spec["bit_width"], calibration_data, **opts)
        else:
            qmodel = spec
        models[label] = qmodel
        sizes[label] = model_size_mb(qmodel)
        frames[label] = _predict(qmodel, batches, names, lv, progress, label)
    keep = ["sample_id", "y_true", "y_pred", *[c for c in frames["baseline"].columns if c.startswith("prob")], *attrs]
    frames = {k: f[[c for c in keep if c in f.columns]] for k, f in frames.items()}
    num_classes = sum(c.startswith("prob_") for c in frames["baseline"].columns) or None
    rows = pd.DataFrame([{"cell": k, "dataset": "data", "model": "model", "target": "",
                          "method": "baseline" if k == "baseline" else k, "variant": "", "backend": "",
                          "weight_bits": "", "act_bits": "", "seed": seed, "num_classes": num_classes,
                          "sensitive_attributes": ";".join(attrs), "predictions": ""} for k in frames])
    store = store_from_frames(rows, frames)
    store.metrics["config"] = list(frames)  # labels as given
    mgs = DEFAULT_MIN_GROUP_SIZE if min_group_size is None else min_group_size
    deltas, pairs = compute_deltas(store, n_bootstrap=n_bootstrap, n_permutations=n_bootstrap, seed=seed,
                                   min_group_size=mgs)
    deltas["p_adjusted"] = benjamini_hochberg(deltas["p_value"].to_numpy(float))
    flips = compute_flips(store, pairs)
    return QuantizationComparison(deltas, flips, {k: frames[k] for k in frames}, models, sizes,
                                  attributes=";".join(attrs))
