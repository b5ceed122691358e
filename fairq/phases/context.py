"""What every phase shares: the resolved config, the store, the datamodule, trainers and cell evaluation."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from torch import nn

from callbacks import FairnessMonitor
from fairq.errors import UserError
from fairq.store import RunStore, cell_id

log = logging.getLogger("fairq")


class MissingPhaseError(UserError, RuntimeError):
    """A phase needs results that an earlier phase writes."""


@dataclass
class RunContext:
    """State shared by the phases of one ``main.py`` run (one output directory)."""

    store: RunStore
    datamodule: Any
    models: list[str]
    seed: int = 0
    pretrained: bool | None = None
    trainer: dict = field(default_factory=dict)
    optim: dict = field(default_factory=dict)
    evaluation: dict = field(default_factory=dict)
    sections: dict = field(default_factory=dict)  # per-phase config sections (quantization, mitigation, …)
    _data_ready: bool = False

    def use_seed(self, seed: int) -> None:
        """Make ``seed`` the training seed of what follows (cells, checkpoints, calibration draws, shuffling); the
        data seed stays the datamodule's own, so every training seed sees the same samples."""
        self.seed = int(seed)
        if hasattr(self.datamodule, "sampling_seed"):
            self.datamodule.sampling_seed = int(seed)

    # --- data --------------------------------------------------------------------------------------------
    def data(self):
        """The datamodule, prepared and set up once; its split description is saved as ``data.json``."""
        if not self._data_ready:
            self.datamodule.prepare_data()
            self.datamodule.setup("fit")
            self.store.write_json("data.json", self.datamodule.describe())
            self._data_ready = True
        return self.datamodule

    @property
    def dataset(self) -> str:
        return self.datamodule.dataset_name

    # --- training ----------------------------------------------------------------------------------------
    def make_trainer(self, run_name: str, ckpt_dir=None, **overrides) -> L.Trainer:
        """A Lightning Trainer with fairq's TensorBoard logger, fairness callback and (optional) checkpoints."""
        kwargs = {**self.trainer, **overrides}
        callbacks = [FairnessMonitor()]
        if ckpt_dir is not None:
            callbacks.append(ModelCheckpoint(dirpath=ckpt_dir, save_last=True, save_top_k=0))
        logger = TensorBoardLogger(save_dir=str(self.store.root / "tensorboard"), name=run_name, version="")
        kwargs.setdefault("enable_model_summary", False)
        kwargs.setdefault("num_sanity_val_steps", 0)
        return L.Trainer(logger=logger, callbacks=callbacks, default_root_dir=str(self.store.root), **kwargs)

    # --- evaluation --------------------------------------------------------------------------------------
    def evaluate_cell(self, result, *, model_name: str, method: str, variant: str = "", extra: dict | None = None,
                      cell: str | None = None, reference: nn.Module | None = None) -> dict:
        """Evaluate ``result.model`` as the datamodule's task says (per-sample frame + metrics computed from it),
        measure size/latency, store it all (plus any side files the task derives from the frame).

        ``result``: a :class:`~fairq.compression.MethodResult` — the model and what the row records about it
        (widths, backend, simulation, activation code range, simulated layers, size format).

        With ``reference`` (the FP32 baseline model) latency is timed alternately with it in this process and the
        row also gets ``latency_ratio_vs_fp32`` (steady when the machine's load shifts both).
        """
        from fairq.compression import measure_latency, measure_latency_paired, model_size

        model, weight_bits, act_bits = result.model, result.weight_bits, result.act_bits
        dm = self.data()
        task = dm.task
        cell = cell or cell_id(self.dataset, model_name, method, weight_bits, act_bits, self.seed, variant)
        progress = bool(self.evaluation.get("progress", True))
        t0 = time.perf_counter()
        frame, metrics = task.evaluate(model, dm, progress=progress, desc=cell)
        eval_s = time.perf_counter() - t0
        size_mb, size_kind = model_size(model, result.size_format)
        example = next(iter(dm.split_dataloader("test", batch_size=int(self.evaluation.get("latency_batch_size", 32)))))
        repeats = int(self.evaluation.get("latency_repeats", 10))
        if reference is not None:
            lat = measure_latency_paired(model, reference, example, repeats=repeats, task=dm.task)
        else:
            lat = measure_latency(model, example, task=dm.task, repeats=repeats)
        row = {
            "cell": cell, "dataset": self.dataset, "model": model_name, "method": method, "variant": variant,
            "weight_bits": weight_bits, "act_bits": 32 if act_bits is None and method == "baseline" else act_bits,
            "seed": self.seed, "backend": result.backend, "n": len(frame),
            "task": task.name,
            "target": dm.target_name, "num_classes": dm.num_classes,
            "sensitive_attributes": ";".join(dm.sensitive_names),
            **metrics, "size_mb": size_mb, "size_kind": size_kind, "latency_ms": lat["latency_ms"],
            "latency_batch_size": lat["batch_size"], "eval_seconds": round(eval_s, 3), **(extra or {}),
        }
        if "params" not in row and row["backend"] == "fp32":  # e.g. the baseline (methods that change it record theirs)
            from fairq.compression.core.sparsity import count_params

            row.update(count_params(model))
        qrange = result.act_qrange
        if qrange is not None:  # the activation codes used (real INT8: 0..127 on CPUs without VNNI)
            row["act_code_range"] = f"{qrange[0]}..{qrange[1]}"
            if row["backend"] == "int8":
                row["int8_act_range"] = row["act_code_range"]
        if "latency_ratio_vs_fp32" in lat:
            row["latency_ratio_vs_fp32"] = lat["latency_ratio_vs_fp32"]
        if result.simulation:  # how a simulated model was built (graph / layer_input)
            row["simulation"] = result.simulation
        if result.simulated_layers is not None:  # real int4 cells: layers without a kernel, simulated
            row["simulated_layers"] = ";".join(result.simulated_layers)
        for suffix, content in task.side_files(frame).items():  # before add_cell, whose row marks the cell done
            self.store.write_json(f"predictions/{cell}{suffix}", content)
        self.store.add_cell(row, frame)
        log.info("%s: %s, %.2f MB (%s), %.1f ms", cell, task.summary(row), size_mb, size_kind, lat["latency_ms"])
        return row

    def cell(self, model_name: str, method: str, weight_bits: int, act_bits: int | None, variant: str = "") -> str:
        return cell_id(self.dataset, model_name, method, weight_bits, act_bits, self.seed, variant)

    # --- baseline weights ---------------------------------------------------------------------------------
    def build_model(self, model_name: str):
        """``(model, ModelInfo)``: ``model_name`` built for the data, with where its weights came from."""
        from fairq.models import create_model

        return create_model(model_name, num_classes=self.data().num_classes, pretrained=self.pretrained,
                            return_info=True, **self.model_kwargs(model_name))

    def model_kwargs(self, model_name: str) -> dict:
        """The data's input size for models built for one input size (ViT-family; see ``input_size_keyword``)."""
        from fairq.models import input_size_keyword

        key = input_size_keyword(model_name)
        return {key: int(self.data().image_size)} if key else {}

    def load_baseline(self, model_name: str) -> nn.Module:
        """The baseline weights of ``model_name`` written by the baseline phase (or the datamodule's task's own
        ``load_baseline(ctx, model_name)``, when it has one)."""
        hook = getattr(self.data().task, "load_baseline", None)
        if hook is not None:
            return hook(self, model_name)
        path = self.store.checkpoint_path(model_name, self.seed)
        if not path.exists():
            raise MissingPhaseError(f"no baseline checkpoint for {model_name!r} (seed {self.seed}) at {path}; "
                                    f"run `python main.py --phase baseline` with the same --output_dir first")
        from fairq.models import create_model

        model = create_model(model_name, num_classes=self.data().num_classes, pretrained=False,
                             **self.model_kwargs(model_name))
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        return model.eval()
