"""Read the run store (``metrics.csv`` + ``predictions/<cell>.parquet``) for analysis, with clear errors.

Analysis reads only these files; it never trains or evaluates. The layout is the store contract of
``docs/user-guide/output.md``: one ``metrics.csv`` row per evaluated cell and one parquet of per-sample predictions
per cell (``sample_id, y_true, y_pred, prob_0..prob_{C-1}`` (or ``prob`` when binary) and one string column per
sensitive attribute).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from fairq.store import RunStore

__all__ = ["ID_COLUMNS", "Cell", "Store", "load_store", "store_from_frames", "make_cell", "phase_of",
           "is_mitigation", "config_label"]

#: Columns identifying a cell in every analysis table (those missing from metrics.csv are filled with "").
ID_COLUMNS = ("cell", "dataset", "model", "target", "method", "variant", "weight_bits", "act_bits", "backend",
              "seed")
#: Columns a cell's configuration is made of (``ID_COLUMNS`` minus the cell id and the seed).
CONFIG_COLUMNS = ("dataset", "model", "target", "method", "variant", "weight_bits", "act_bits", "backend")
#: Baseline pairing key: a cell's baseline is the ``method == "baseline"`` row with the same values.
PAIR_COLUMNS = ("dataset", "model", "target", "seed")
_REQUIRED = ("cell", "dataset", "model", "method", "seed", "predictions")
_PRED_REQUIRED = ("sample_id", "y_true", "y_pred")


def phase_of(row) -> str:
    """The ``--phase`` that wrote a cell (its ``phase`` column; older stores lack it)."""
    phase = str(row.get("phase", "") or "")
    if phase and phase != "nan":
        return phase
    return "baseline" if row.get("method") == "baseline" else "quantization / mitigation"


def is_mitigation(metrics: pd.DataFrame) -> pd.Series:
    """Cells whose method names a plain reference method to be judged against (its ``reference_method``)."""
    ref = metrics["reference_method"] if "reference_method" in metrics.columns else pd.Series("", metrics.index)
    return ref.fillna("").astype(str).ne("")


def config_label(row) -> str:
    """Short readable label of a cell's configuration, e.g. ``"ptq_static w4a8 observer=percentile"``."""
    if row["method"] == "baseline":
        label = "baseline"
    else:
        # a model with preserved or mixed widths is labelled with its measured average width, not the nominal one
        avg = row.get("_avg_weight_bits", row.get("avg_weight_bits", ""))
        wb = _fmt_bits(avg) if _fmt_bits(avg) else _fmt_bits(row.get("weight_bits", ""))
        ab = _fmt_bits(row.get("act_bits", ""))
        bits = (f" w{wb}" + (f"a{ab}" if ab else "")) if wb else ""  # no act bits: e.g. dynamic activations
        label = f"{row['method']}{bits}"
    variant = str(row.get("variant", "") or "")
    backend = str(row.get("backend", "") or "")
    if variant:
        label += f" {variant}"
    if backend and row.get("_backend_varies", False):
        label += f" [{backend}]"
    return label


def _fmt_bits(v) -> str:
    """``8`` / ``8.0`` → ``"8"``; a mixed-precision average ``4.991`` → ``"4.99"`` (never truncated to a width the
    model does not have); missing (None, NaN, "") → ``""``."""
    if v is None or (isinstance(v, float) and np.isnan(v)) or str(v).strip().lower() in ("", "nan", "none"):
        return ""
    try:
        f = float(v)
    except (TypeError, ValueError):
        return str(v)
    return str(int(f)) if f.is_integer() else f"{f:.3g}"


@dataclass
class Cell:
    """One evaluated cell: its metrics.csv row and its per-sample predictions (sorted by ``sample_id``)."""

    row: pd.Series
    frame: pd.DataFrame
    sensitive: list[str]
    probs: np.ndarray | None = field(default=None, repr=False)  # [n, C] or None when not stored

    @property
    def ids(self) -> np.ndarray:
        """Sorted sample ids as a numpy unicode array (fast to intersect and search)."""
        if self._ids is None:
            self._ids = self.frame["sample_id"].to_numpy(dtype=str)
        return self._ids

    _ids: np.ndarray | None = field(default=None, repr=False)

    @property
    def id(self) -> str:
        return str(self.row["cell"])


@dataclass
class Store:
    """What analysis works from: the metrics table and every cell's predictions."""

    output_dir: Path
    metrics: pd.DataFrame
    cells: dict[str, Cell]
    run: RunStore | None = None  # the output folder (None for an in-memory store)

    def write_csv(self, name: str, frame: pd.DataFrame) -> Path:
        """Write a table into the output folder atomically (through :class:`fairq.store.RunStore`)."""
        run = self.run or RunStore(self.output_dir)
        return run.write_csv(name, frame)

    def baseline_of(self, cell_id: str) -> str | None:
        """Cell id of the baseline paired with ``cell_id`` (same dataset, model, target, seed), or None."""
        row = self.metrics.loc[cell_id]
        if row["method"] == "baseline":
            return None
        m = self.metrics
        mask = m["method"].eq("baseline")
        for col in PAIR_COLUMNS:
            mask &= m[col].astype(str).eq(str(row[col]))
        cands = m[mask]
        if cands.empty:
            return None
        # Prefer the plain full-precision baseline when several exist (e.g. one per backend).
        pref = cands[cands["variant"].eq("")]
        pref = pref if not pref.empty else cands
        same_backend = pref[pref["backend"].astype(str).eq(str(row["backend"]))]
        return str((same_backend if not same_backend.empty else pref).index[0])


_TEXT = ("cell", "variant", "backend", "target", "dataset", "model", "method", "sensitive_attributes",
         "predictions", "phase", "family", "reference_method", "reference_config", "simulation", "task")


def _read_metrics(run: RunStore) -> pd.DataFrame:
    path, output_dir = run.metrics_path, run.root
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: analysis reads the evaluated cells from it. Run `python main.py --phase baseline "
            f"--output_dir {output_dir}` (and the quantization / mitigation phases) first.")
    metrics = run.metrics(text_columns=_TEXT)
    missing = [c for c in _REQUIRED if c not in metrics.columns]
    if missing:
        raise ValueError(f"{path} lacks the columns {missing}; the store contract needs at least {list(_REQUIRED)} "
                         f"plus the metric columns (see docs/user-guide/output.md)")
    if metrics.empty:
        raise ValueError(f"{path} has no rows. Run `python main.py --phase baseline --output_dir {output_dir}` first.")
    metrics = _with_text_columns(metrics)
    dup = metrics["cell"][metrics["cell"].duplicated()].unique()
    if len(dup):
        raise ValueError(f"{path}: cell ids must be unique; duplicated: {list(dup)[:5]}")
    # One order whatever order the cells finished in (Ray stores them as they complete): by phase, then cell id,
    # so the tables of a serial and a Ray run of one config are the same files.
    rank = metrics.apply(lambda r: {"baseline": 0, "quantization": 1, "mitigation": 2}.get(phase_of(r), 3), axis=1)
    metrics = metrics.assign(_rank=rank).sort_values(["_rank", "cell"], kind="stable").drop(columns="_rank")
    metrics = metrics.set_index("cell", drop=False)
    metrics.index.name = None
    if not metrics["method"].eq("baseline").any():
        raise ValueError(f"{path} has no baseline rows (method == 'baseline'). Run `python main.py --phase baseline "
                         f"--output_dir {output_dir}` first.")
    return metrics


def _prob_columns(frame: pd.DataFrame) -> list[str]:
    cols = [c for c in frame.columns if c.startswith("prob_") and c[5:].isdigit()]
    return sorted(cols, key=lambda c: int(c[5:]))


def _read_cell(run: RunStore, row: pd.Series) -> Cell:
    rel = str(row["predictions"])
    path = run.root / rel
    if not rel or rel == "nan" or not path.is_file():
        phase = phase_of(row)
        raise FileNotFoundError(
            f"predictions of cell {row['cell']!r} not found at {path} (metrics.csv column 'predictions' = {rel!r}). "
            f"Rerun `python main.py --phase {phase} --output_dir {run.root}`, which writes them.")
    return make_cell(row, run.predictions(str(row["cell"]), rel), source=str(path))


def make_cell(row: pd.Series, frame: pd.DataFrame, *, source: str = "predictions") -> Cell:
    """Validate one cell's predictions frame (parquet layout) and wrap it with its metrics row."""
    sensitive = [s for s in str(row.get("sensitive_attributes", "")).split(";") if s and s != "nan"]
    if not sensitive:
        sensitive = [c for c in frame.columns if c not in _PRED_REQUIRED and c != "prob" and not c.startswith("prob_")]
    missing = [c for c in _PRED_REQUIRED + tuple(sensitive) if c not in frame.columns]
    if missing:
        raise ValueError(f"{source} lacks the columns {missing}; expected sample_id, y_true, y_pred, "
                         f"prob_0..prob_{{C-1}} (or prob) and one column per sensitive attribute {sensitive}")
    if not sensitive:
        raise ValueError(f"{source}: no sensitive attribute columns (metrics.csv 'sensitive_attributes' is empty)")
    frame = frame.copy()
    frame["sample_id"] = frame["sample_id"].astype(str)
    if frame["sample_id"].duplicated().any():
        raise ValueError(f"{source}: sample_id values must be unique")
    for col in sensitive:
        frame[col] = frame[col].astype(str)
    order = np.argsort(frame["sample_id"].to_numpy(dtype=str), kind="stable")  # numpy order: searchsorted agrees
    frame = frame.iloc[order].reset_index(drop=True)
    probs = None
    pcols = _prob_columns(frame)
    if pcols:
        probs = frame[pcols].to_numpy(dtype=float)
    elif "prob" in frame.columns:
        p1 = frame["prob"].to_numpy(dtype=float)
        probs = np.stack([1.0 - p1, p1], axis=1)
    return Cell(row=row, frame=frame, sensitive=sensitive, probs=probs)


def _with_text_columns(metrics: pd.DataFrame) -> pd.DataFrame:
    """Every id and text column present (older stores lack some: ``""``), text columns as strings, missing → ``""``.

    Missing columns are added in one ``concat`` and the result is copied once: inserting them one by one left a wide
    metrics table (100+ metric columns) fragmented, and pandas warned on every later insert.
    """
    names = list(dict.fromkeys(ID_COLUMNS + ("sensitive_attributes",) + _TEXT))
    missing = [c for c in names if c not in metrics.columns]
    if missing:
        metrics = pd.concat([metrics, pd.DataFrame("", index=metrics.index, columns=missing)], axis=1)
    else:
        metrics = metrics.copy()
    text = metrics[list(_TEXT)]
    metrics[list(_TEXT)] = text.where(text.notna(), "").astype(str)
    return metrics.copy()


def _finish_metrics(metrics: pd.DataFrame) -> pd.DataFrame:
    # Name the backend in a label only where one configuration was evaluated on several (e.g. real vs simulated
    # INT8); a baseline on fp32 next to simulated cells is not that.
    key = ["dataset", "model", "method", "weight_bits", "act_bits", "variant"]
    metrics["_backend_varies"] = metrics[key].astype(str).join(metrics["backend"]).groupby(key)["backend"] \
        .transform("nunique").to_numpy() > 1
    if "avg_weight_bits" in metrics.columns:  # one label per configuration: the mean measured width over seeds
        avg = pd.to_numeric(metrics["avg_weight_bits"], errors="coerce")
        metrics["_avg_weight_bits"] = avg.groupby([metrics[k].astype(str) for k in key]).transform("mean").round(2)
    metrics["config"] = [config_label(r) for _, r in metrics.iterrows()]
    return metrics


def store_from_frames(rows: pd.DataFrame, frames: dict[str, pd.DataFrame]) -> Store:
    """An in-memory :class:`Store` (no files): ``rows`` as metrics.csv rows, ``frames`` cell id → predictions."""
    metrics = rows.copy()
    metrics = _with_text_columns(metrics)
    metrics = _finish_metrics(metrics.set_index("cell", drop=False))
    metrics.index.name = None
    cells = {cid: make_cell(row, frames[cid], source=f"predictions of {cid!r}") for cid, row in metrics.iterrows()}
    return Store(output_dir=Path("."), metrics=metrics, cells=cells)


def load_store(output_dir: str | Path, *, progress: bool = False) -> Store:
    """Read ``metrics.csv`` and every cell's predictions from ``output_dir``.

    Raises
    ------
    FileNotFoundError / ValueError
        Naming the missing file or column and the phase to run first.
    """
    from tqdm.auto import tqdm

    output_dir = Path(output_dir)
    run = RunStore(output_dir, create=False)
    metrics = _finish_metrics(_read_metrics(run))
    cells = {}
    for cid, row in tqdm(metrics.iterrows(), total=len(metrics), desc="analysis: reading predictions",
                         disable=not progress):
        cells[cid] = _read_cell(run, row)
    store = Store(output_dir=output_dir, metrics=metrics, cells=cells, run=run)
    orphans = [c for c in metrics.index if metrics.at[c, "method"] != "baseline" and store.baseline_of(c) is None]
    if orphans:
        warnings.warn(f"{len(orphans)} cell(s) have no baseline with the same dataset, model, target and seed "
                      f"(e.g. {orphans[:3]}); they get values but no deltas. Run `python main.py --phase baseline` "
                      f"with that seed to pair them.", stacklevel=2)
    return store
