"""User-facing helpers with the names of the Beyond-Naive-Quantization study, built on fairq's own code.

- :func:`compute_fairness_metrics` evaluates one model (``fairq.evaluate.predict_frame``) and scores it with
  ``fairq.metrics.fairness_metrics`` (optionally with stratified-bootstrap CIs).
- :func:`compare_quantization_methods` quantizes a model several ways (``fairq.compression.apply_quantization``),
  evaluates every variant on the same samples and compares each with the full-precision model using the analysis
  package's statistics (paired bootstrap CIs, McNemar / paired permutation tests, Benjamini–Hochberg, flips).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from fairq.batches import ClassificationTask, task_of  # noqa: F401 (task_of: public here)

log = logging.getLogger("fairq")

__all__ = ["compute_fairness_metrics", "compare_quantization_methods", "QuantizationComparison"]

_HEADLINE = ("accuracy", "worst_group_accuracy", "demographic_parity_difference", "equalized_odds_difference")

#: The Beyond-Naive-Quantization study's metric names → fairq's (the same numbers; fairq's names are the documented
#: ones and the only keys a result lists).
METRIC_ALIASES = {
    "demographic_parity": "demographic_parity_difference",
    "equalized_odds": "equalized_odds_difference",
    "equal_opportunity": "equal_opportunity_difference",
    "predictive_equality": "predictive_equality_difference",
    "worst_group_acc": "worst_group_accuracy",
}


class FairnessResult(dict):
    """The dict :func:`compute_fairness_metrics` returns; the study's names (:data:`METRIC_ALIASES`) read the same
    numbers as fairq's (``r["demographic_parity"] is r["demographic_parity_difference"]``) without being listed."""

    def __missing__(self, key):
        if key in METRIC_ALIASES:
            return self[METRIC_ALIASES[key]]
        raise KeyError(key)

    def get(self, key, default=None):
        try:
            return self[key]
        except KeyError:
            return default


# ------------------------------------------------------------------------------------------------ inputs
def datamodule_of(loader):
    """The fairq datamodule a loader was made by (or the datamodule itself), or None for any other loader."""
    if hasattr(loader, "test_dataloader") and hasattr(loader, "task"):
        return loader
    dataset = getattr(loader, "dataset", None)
    for obj in (dataset, getattr(dataset, "dataset", None)):  # through a Subset too
        dm = getattr(obj, "datamodule", None) if obj is not None else None
        if dm is not None:
            return dm
    return None


def _resolve(loader, sensitive_attr, sensitive_names, sensitive_levels):
    """``(loader, task, attributes to score)``.

    A datamodule (anything with ``test_dataloader`` and ``task``) supplies its test loader; a loader made by a fairq
    datamodule describes itself (:func:`task_of`). Otherwise ``sensitive_names`` gives the column order of
    ``batch["sensitive"]`` (a single column may be named by ``sensitive_attr`` alone); levels default to the codes.
    """
    if hasattr(loader, "test_dataloader") and hasattr(loader, "task"):
        loader = loader.test_dataloader()
    task = task_of(loader)
    wanted = [sensitive_attr] if isinstance(sensitive_attr, str) else (list(sensitive_attr) if sensitive_attr
                                                                        else None)
    names = list(sensitive_names) if sensitive_names is not None else (
        list(task.sensitive_names) if task is not None and task.sensitive_names else None)
    if names is None:
        if wanted is None or len(wanted) != 1:
            raise ValueError("name the columns of batch['sensitive']: pass sensitive_names=[...] (in column order), "
                             "a loader made by a fairq datamodule, or the datamodule itself")
        names = wanted
    levels = dict(task.sensitive_levels) if task is not None else {}
    levels.update(sensitive_levels or {})
    unknown = [a for a in (wanted or []) if a not in names]
    if unknown:
        raise ValueError(f"sensitive attribute(s) {unknown} not among the batch's columns {names}")
    task = ClassificationTask(input_keys=task.input_keys if task is not None else None,
                              sensitive_names=tuple(names), sensitive_levels=levels)
    return loader, task, (wanted or names)


def _predict(model, loader, task, progress, desc) -> pd.DataFrame:
    from fairq.evaluate import predict_frame

    return predict_frame(model, loader, task=task, progress=progress, desc=desc)


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
    FairnessResult (a dict)
        The scalar metrics, ``model_size_mb`` (bytes ``torch.save`` writes, :func:`fairq.compression.model_size_mb`),
        ``per_group`` (DataFrame), ``predictions`` (the per-sample frame) and, with ``n_bootstrap``, ``ci``. The
        study's names (``demographic_parity``, ``equalized_odds``, …: :data:`METRIC_ALIASES`) read the same numbers.
    """
    from fairq.compression import model_size_mb
    from fairq.metrics import DEFAULT_MIN_GROUP_SIZE, bootstrap_ci, fairness_metrics

    loader, task, attrs = _resolve(loader, sensitive_attr, sensitive_names, sensitive_levels)
    frame = _predict(model, loader, task, progress, "evaluate")
    mgs = DEFAULT_MIN_GROUP_SIZE if min_group_size is None else min_group_size
    out = FairnessResult(fairness_metrics(frame["y_true"], frame["y_pred"], frame[attrs], pos_label=pos_label,
                                          min_group_size=mgs))
    out["model_size_mb"] = model_size_mb(model)
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
    from fairq.compression.core.registry import ALIASES
    from fairq.methods import METHODS

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
            if spec["method"] in ALIASES and spec["method"] not in METHODS:  # a study alias names itself
                label = spec["method"]
            else:
                label = f"{spec['method']}_int{spec['bit_width']}" if spec.get("bit_width") else spec["method"]
        out.append((str(label), spec))
    labels = [lab for lab, _ in out]
    dup = {lab for lab in labels if labels.count(lab) > 1}
    if dup or "baseline" in labels:
        raise ValueError(f"method labels must be unique and not 'baseline'; got {labels}")
    return out


_WHAT = {"calibration": ("calibration_data", "calibration batches, e.g. dm.calibration_dataloader(256)"),
         "balanced_calibration": ("calibration_data", "calibration batches with sensitive codes to draw a "
                                  "group-balanced set from, e.g. dm.train_dataloader()"),
         "training": ("train_loader", "training batches, e.g. dm.train_dataloader()"),
         "validation": ("validation_data", "validation batches with sensitive codes, e.g. dm.val_dataloader()")}


#: Calibration draw of :func:`compare_quantization_methods` when it takes one from a datamodule (the CLI's default).
DEFAULT_CALIBRATION_SAMPLES = 256


def _from_datamodule(dm, need: str, seed: int):
    """The batches a method ``need`` s, from the datamodule's training / validation split (never its test split)."""
    if need == "calibration":
        return dm.calibration_dataloader(DEFAULT_CALIBRATION_SAMPLES, seed=seed), \
            f"{DEFAULT_CALIBRATION_SAMPLES} samples drawn from its training split"
    if need == "balanced_calibration":
        return dm.calibration_dataloader(DEFAULT_CALIBRATION_SAMPLES, balanced=True, seed=seed), \
            f"{DEFAULT_CALIBRATION_SAMPLES} samples drawn equally per group from its training split"
    if need == "training":
        return dm.train_dataloader(), "its training split"
    return dm.val_dataloader(), "its validation split"


def _method_inputs(specs, datamodule, seed: int, **given) -> dict[str, dict]:
    """Each method's data: ``{label: {argument: batches}}``.

    What the caller passed wins; a method that needs data the caller did not pass gets it from the test loader's
    fairq datamodule (its training / validation split, said in the log); with a loader that is not fairq's, the
    argument is named before any work, e.g. QAT without ``train_loader``."""
    from fairq.compression.core.registry import get_method, resolve_alias

    out, drawn = {}, {}
    for label, spec in specs:
        if not isinstance(spec, Mapping):
            continue
        needs = get_method(resolve_alias(spec["method"])[0]).needs
        inputs = {}
        for need, (arg, what) in _WHAT.items():
            if need not in needs:
                continue
            if given[arg] is not None:
                inputs[arg] = given[arg]
            elif datamodule is not None:
                if need not in drawn:
                    drawn[need] = _from_datamodule(datamodule, need, seed)
                    log.info("compare_quantization_methods: no %s given — %s for %s: %s of the test loader's "
                             "datamodule", arg, what.split(",")[0], label, drawn[need][1])
                inputs[arg] = drawn[need][0]
            else:
                raise ValueError(f"{label!r} needs {what}: pass {arg}=... to compare_quantization_methods, or a "
                                 "loader made by a fairq datamodule (calibration is never taken from the test set)")
        out[label] = inputs
    return out


def compare_quantization_methods(model, methods, test_loader, sensitive_attrs: str | Sequence[str] | None = None, *,
                                 calibration_data=None, train_loader=None, validation_data=None,
                                 bit_width: int = 8,
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
    train_loader, validation_data : iterable, optional
        Training batches (QAT, fairness fine-tuning) and validation batches (mixed precision, preservation) for the
        methods that declare they need them. Not given, they come from the test loader's fairq datamodule (a
        seeded draw of ``DEFAULT_CALIBRATION_SAMPLES`` training samples — group-balanced for a method that asks for
        it —, its training loader, its validation loader; the log says so); with another loader, a method whose
        data is missing is a clear error before any work.
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
    from fairq.compression import model_size_mb
    from fairq.compression.api import apply_method
    from fairq.methods import load_methods
    from fairq.metrics import DEFAULT_MIN_GROUP_SIZE

    specs = _method_specs(methods, bit_width)
    inputs = _method_inputs(specs, datamodule_of(test_loader), seed, calibration_data=calibration_data,
                            train_loader=train_loader, validation_data=validation_data)
    loader, task, attrs = _resolve(test_loader, sensitive_attrs, sensitive_names, sensitive_levels)
    frames = {"baseline": _predict(model, loader, task, progress, "baseline")}
    models, sizes = {}, {"baseline": model_size_mb(model)}
    load_methods()  # every shipped method (mitigations too) and plugins
    for label, spec in specs:
        size_format = "dense"
        if isinstance(spec, Mapping):
            opts = {k: v for k, v in spec.items() if k not in ("method", "bit_width")}
            data = inputs[label]
            result = apply_method(model, spec["method"], spec["bit_width"], data.get("calibration_data"),
                                  train_loader=data.get("train_loader"), val_data=data.get("validation_data"), **opts)
            qmodel, size_format = result.model, result.size_format
        else:
            qmodel = spec
        models[label] = qmodel
        sizes[label] = model_size_mb(qmodel, size_format)
        frames[label] = _predict(qmodel, loader, task, progress, label)
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
