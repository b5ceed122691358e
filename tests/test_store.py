"""The run store: atomic writes, resumable cells, the predictions/metrics contract."""
import os

import pandas as pd
import pytest

from fairq import store as store_mod
from fairq.store import RunStore, atomic_write_text, cell_id


def _frame(n=4):
    return pd.DataFrame({"sample_id": [f"s{i}" for i in range(n)], "y_true": [0, 1] * (n // 2),
                         "y_pred": [0] * n, "race": ["a", "b"] * (n // 2)})


def test_cell_id_is_filename_safe_and_distinct():
    a = cell_id("utkface", "tv/resnet18", "ptq_static", 8, 8, 0)
    b = cell_id("utkface", "tv/resnet18", "ptq_static", 4, 8, 0)
    assert "/" not in a and a != b
    assert cell_id("d", "m", "qat", 8, 8, 0, variant="observer=mse").endswith("observer=mse")


def test_add_cell_writes_predictions_then_row_and_rerun_detects_it(tmp_path):
    st = RunStore(tmp_path)
    assert not st.has_cell("c1")
    st.add_cell({"cell": "c1", "accuracy": 0.5}, _frame())
    st.add_cell({"cell": "c2", "accuracy": 0.75}, _frame())
    df = st.metrics()
    assert list(df["cell"]) == ["c1", "c2"]
    assert df.loc[0, "predictions"] == "predictions/c1.parquet"
    assert st.has_cell("c2")
    pd.testing.assert_frame_equal(st.predictions("c1"), _frame())
    # re-adding a cell replaces its row rather than duplicating it
    st.add_cell({"cell": "c1", "accuracy": 0.25}, _frame())
    df = RunStore(tmp_path).metrics()
    assert len(df) == 2 and df.set_index("cell").loc["c1", "accuracy"] == 0.25


def test_crash_during_write_leaves_previous_file_whole(tmp_path, monkeypatch):
    path = tmp_path / "metrics.csv"
    atomic_write_text(path, "cell,accuracy\nc1,0.5\n")

    def boom(*args, **kwargs):
        raise KeyboardInterrupt("killed mid-write")

    monkeypatch.setattr(store_mod.os, "replace", boom)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_text(path, "cell,accuracy\nc1,0.5\nc2,0.7\n")
    assert path.read_text() == "cell,accuracy\nc1,0.5\n"
    assert [p for p in os.listdir(tmp_path) if p.endswith(".tmp")] == []


def test_missing_predictions_error_names_the_cell(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope"):
        RunStore(tmp_path).predictions("nope")


def test_concurrent_writers_keep_every_row(tmp_path):
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_write_cells, args=(str(tmp_path), w)) for w in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert len(RunStore(tmp_path).metrics()) == 3 * 8


def _write_cells(root, worker):
    st = RunStore(root)
    for i in range(8):
        st.add_cell({"cell": f"w{worker}_c{i}", "accuracy": 0.5}, _frame())
