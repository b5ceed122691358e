"""The run's output directory: atomic, append-only, resumable.

Layout (the output contract in docs/user-guide/output.md)::

    config.yaml  environment.json  data.json  metrics.csv
    predictions/<cell>.parquet  checkpoints/  tensorboard/  plans/

Every write goes to a temporary file in the same directory and is moved into place with ``os.replace``, so a
crash never leaves a torn CSV or Parquet file; a cell counts as done only once its metrics row is in
``metrics.csv``, which is written after its predictions file.
"""
from __future__ import annotations

import contextlib
import fcntl
import io
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd
import torch

METRIC_COLUMNS = (
    "accuracy", "worst_group_accuracy", "demographic_parity_difference", "demographic_parity_ratio",
    "equalized_odds_difference", "equal_opportunity_difference", "predictive_equality_difference",
    "disparate_impact", "accuracy_difference",
)
IDENTITY_COLUMNS = ("cell", "dataset", "model", "method", "variant", "weight_bits", "act_bits", "seed")


def cell_id(dataset: str, model: str, method: str, weight_bits: int, act_bits: int | None, seed: int,
            variant: str = "") -> str:
    """Filename-safe unique id of one evaluated cell."""
    act = "x" if act_bits is None else act_bits
    parts = [dataset, model, method, f"w{weight_bits}a{act}", f"s{seed}"] + ([variant] if variant else [])
    return re.sub(r"[^A-Za-z0-9_.=-]+", "-", "__".join(str(p) for p in parts))


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see either the old file or the whole new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_csv(path: str | os.PathLike, frame: pd.DataFrame) -> Path:
    """``frame.to_csv(path, index=False)``, atomically."""
    atomic_write_text(path, frame.to_csv(index=False))
    return Path(path)


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


class RunStore:
    """One run's output directory (see the module docstring for the layout).

    ``RunStore(root)`` creates the folder (a run writing into it); ``RunStore(root, create=False)`` only reads an
    existing one (analysis), so a mistyped path is an error rather than a new empty folder.
    """

    def __init__(self, root: str | os.PathLike, *, create: bool = True):
        self.root = Path(root)
        if create:
            self.root.mkdir(parents=True, exist_ok=True)

    # --- paths -------------------------------------------------------------------------------------------
    @property
    def metrics_path(self) -> Path:
        return self.root / "metrics.csv"

    def path(self, *parts: str) -> Path:
        p = self.root.joinpath(*parts)
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def checkpoint_path(self, model: str, seed: int, tag: str = "baseline") -> Path:
        """Final weights (a plain state_dict) of a trained model, read back with ``weights_only=True``."""
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "-", model)
        return self.path("checkpoints", f"{safe}__{tag}__s{seed}.pt")

    # --- metrics rows ------------------------------------------------------------------------------------
    def metrics(self, *, text_columns=()) -> pd.DataFrame:
        """``metrics.csv`` (empty with the identity columns when absent); ``text_columns`` are read as strings."""
        if not self.metrics_path.exists():
            return pd.DataFrame(columns=list(IDENTITY_COLUMNS))
        return pd.read_csv(self.metrics_path, keep_default_na=False, na_values=[""],
                           dtype={c: str for c in text_columns} or None)

    def has_cell(self, cell: str) -> bool:
        df = self.metrics()
        return bool(len(df)) and cell in set(df["cell"].astype(str))

    def add_cell(self, row: dict[str, Any], predictions: pd.DataFrame) -> Path:
        """Store one cell: its per-sample predictions first, then its metrics row (which marks it done)."""
        cell = row["cell"]
        rel = Path("predictions") / f"{cell}.parquet"
        buf = io.BytesIO()
        predictions.to_parquet(buf, index=False)
        atomic_write_bytes(self.root / rel, buf.getvalue())
        row = {**row, "predictions": rel.as_posix()}
        with self._locked():  # two processes on one output dir must not drop each other's rows
            df = self.metrics()
            df = df[df["cell"].astype(str) != cell] if len(df) else df
            df = pd.concat([df, pd.DataFrame([row])], ignore_index=True) if len(df) else pd.DataFrame([row])
            atomic_write_text(self.metrics_path, df.to_csv(index=False))
        return self.root / rel

    @contextlib.contextmanager
    def _locked(self):
        """Exclusive advisory lock around the read-modify-write of ``metrics.csv``."""
        with open(self.root / ".metrics.lock", "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def predictions(self, cell: str, rel: str | None = None) -> pd.DataFrame:
        """The per-sample predictions of ``cell`` (at ``rel``, its metrics row's ``predictions`` path, if given)."""
        path = self.root / (rel if rel else Path("predictions") / f"{cell}.parquet")
        if not path.is_file():
            raise FileNotFoundError(f"no predictions for cell {cell!r} at {path}")
        return pd.read_parquet(path)

    def write_csv(self, name: str, frame: pd.DataFrame) -> Path:
        """Write a table (e.g. ``tables/deltas.csv``) atomically."""
        return atomic_write_csv(self.root / name, frame)

    def write_text(self, name: str, text: str) -> Path:
        path = self.root / name
        atomic_write_text(path, text)
        return path

    def write_bytes(self, name: str, data: bytes) -> Path:
        path = self.root / name
        atomic_write_bytes(path, data)
        return path

    # --- side files --------------------------------------------------------------------------------------
    def write_json(self, name: str, obj: Any) -> Path:
        path = self.root / name
        atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str))
        return path

    def read_json(self, name: str) -> Any:
        return json.loads((self.root / name).read_text())
