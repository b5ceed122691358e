"""TextDataModule: StereoSet, CrowS-Pairs and BBQ items (+ the embedded default's probes) for masked-LM cells.

Reads the official files under ``root`` (``stereoset_dev.json`` — the official ``dev.json`` renamed —,
``crows_pairs_anonymized.csv``, ``bbq/<Category>.jsonl``); ``*_items`` keep a seeded subset (StereoSet and BBQ
stratified by domain / category and, for BBQ, by context condition with ambiguous/disambiguated twins kept
together) so a config can run in minutes — ``describe()`` (``data.json``) says what was kept. The task it hands
out (:class:`fairq.text.task.TextTask`) evaluates cells; calibration / validation / latency batches are tokenized
sentences of a general English corpus that no benchmark scores (:mod:`fairq.text.corpus`: WordNet's gloss usage
examples, shipped) — not benchmark text: calibrating on the scored items' own sentences (or on sentences about
their target terms, as StereoSet's intersentence contexts are) would fit the compression to the text it is then
judged on.

Training (methods that train: ``distill``, ``qat``, pruning with ``finetune_epochs``): ``train_dataloader()`` gives
MLM batches (``input_ids``, ``attention_mask`` and token-level ``labels``, ``-100`` where not masked; masking by
``transformers``' ``DataCollatorForLanguageModeling``, seeded, BERT's 80/10/10 rule) of a seeded draw of
``train_sentences`` sentences: for the embedded default, a fresh draw from its own pre-training corpus generator
(same rates and templates); for any other model, the text file named by ``train_corpus`` (one sentence per line).
The generated corpus carries the embedded default's planted bias, so a user's model is never trained on it
unless ``train_corpus: embedded`` asks for it; without a corpus the loader fails with a message saying so — when
it is first read, so methods that declare training but do not train (``magnitude_prune`` without fine-tuning) run
on any model.
"""
from __future__ import annotations

import logging
from collections import defaultdict
from pathlib import Path
from typing import Any, Optional

import numpy as np
from torch.utils.data import Dataset

from datamodules.common import FairqDataModule
from fairq.errors import UserError

log = logging.getLogger(__name__)


def _subset(items: list, n: Optional[int], key, seed: int, pair_key=None) -> list:
    """A seeded subset of ``n`` items, stratified by ``key(item)`` (proportional), keeping ``pair_key`` groups whole."""
    if n is None or n >= len(items):
        return list(items)
    rng = np.random.default_rng([seed, 4049])
    units: dict[Any, list] = defaultdict(list)
    for it in items:
        units[pair_key(it) if pair_key else id(it)].append(it)
    strata: dict[Any, list] = defaultdict(list)
    for u in units.values():
        strata[key(u[0])].append(u)
    total = len(items)
    out = []
    for s in sorted(strata, key=str):
        us = strata[s]
        size = sum(map(len, us))
        want = max(1, round(n * size / total))
        order = rng.permutation(len(us))
        got = 0
        for i in order:
            if got >= want:
                break
            out.extend(us[i])
            got += len(us[i])
    return out


def _extra_benchmarks(spec) -> dict[str, dict]:
    """Validate the ``benchmarks`` option: registered names with a reader, each with a dict of options."""
    if not spec:
        return {}
    from fairq.compression.core.registry import did_you_mean
    from fairq.text.benchmarks import benchmarks

    registry = benchmarks()
    if isinstance(spec, (list, tuple)):
        spec = {name: {} for name in spec}
    if not isinstance(spec, dict):
        raise UserError(f"data benchmarks: expected a mapping {{name: {{options}}}}, got {spec!r}")
    out = {}
    for name, options in spec.items():
        bench = registry.get(name)
        if bench is None:
            raise UserError(f"data benchmarks: no text benchmark {name!r} is registered"
                            f"{did_you_mean(name, list(registry))}; registered: {sorted(registry)}")
        if bench.reader is None:
            raise UserError(f"data benchmarks: {name!r} has no reader (it is switched on by its own option)")
        if options is not None and not isinstance(options, dict):
            raise UserError(f"data benchmarks: options of {name!r} must be a mapping, got {options!r}")
        if name in ("stereoset", "crows", "bbq"):
            raise UserError(f"data benchmarks: {name!r} is switched on by --data.init_args.{name}")
        out[name] = dict(options or {})
    return out


class TextDataModule(FairqDataModule):
    """Bias-benchmark items for masked LMs.

    Parameters
    ----------
    root
        Folder holding ``stereoset_dev.json``, ``crows_pairs_anonymized.csv`` and ``bbq/`` (e.g. ``../shared/data/text``).
    stereoset, intersentence, crows, bbq
        Which benchmarks to score (intersentence needs a model with an NSP head; otherwise it is NaN + reason).
    stereoset_items, crows_items, bbq_items
        Seeded (stratified) subset sizes; ``null`` = every item.
    bbq_categories
        BBQ category files to read (default: every ``bbq/*.jsonl``).
    probes
        Also score the embedded default's planted-bias probe items (StereoSet and CrowS format).
    benchmarks
        More registered text benchmarks to score (:mod:`fairq.text.benchmarks`: a benchmark of your own, registered
        by its module), with their options: ``{name: {items: n, ...}}`` — ``items`` a seeded subset size
        (stratified by the benchmark's ``stratum``; default every item), the rest passed to its ``reader(root,
        ...)``.
    batch_size, max_tokens
        Sequences / padded tokens per forward pass of the masked-LM engine.
    compile_engine
        Score through ``torch.compile`` (see :class:`fairq.text.engine.MaskedLMEngine`): ~2× faster on large item
        sets with a full-size model, after a one-off compilation per scored model (~30–60 s on 2 cores) — worth it
        for full StereoSet / CrowS-Pairs runs of a bert-base, not for the tiny default.
    calibration_max_len
        Token cap of calibration and training sentences.
    train_corpus
        MLM training sentences (see the module doc): ``null`` = the embedded default's generated corpus when the
        run's model is the embedded default (any other model then has no training data); a path to a UTF-8 text
        file, one sentence per line; or ``embedded`` = the generated corpus for any model (it plants a bias).
    train_sentences, train_batch_size, train_mask_prob
        Size of the seeded training draw, sentences per training batch, share of tokens masked.
    validation_items
        Held-out StereoSet / CrowS-Pairs items per benchmark (seeded, stratified like the scored subset, drawn only
        from the items *not* scored, so validation and test never share an item and the scored subset is the same
        with or without them): what methods that select on validation (``soft_head_pruning``) read through
        ``val_dataloader().bias_probe``. ``0`` = none; fewer when fewer items are left over.
    seed
        Seed of the subsets, calibration draws and the training corpus (draw, order and masks).
    """

    dataset_name = "text_bias"

    def __init__(self, root: Optional[str] = None, stereoset: bool = True, intersentence: bool = True,
                 crows: bool = True, bbq: bool = True, stereoset_items: Optional[int] = None,
                 crows_items: Optional[int] = None, bbq_items: Optional[int] = None,
                 bbq_categories: Optional[list[str]] = None, probes: bool = True, batch_size: int = 64,
                 max_tokens: int = 8192, calibration_max_len: int = 64, validation_items: int = 100,
                 train_corpus: Optional[str] = None, train_sentences: int = 4000, train_batch_size: int = 32,
                 train_mask_prob: float = 0.15, seed: int = 0, compile_engine: bool = False,
                 benchmarks: Optional[dict[str, dict]] = None):
        super().__init__()
        if batch_size <= 0 or max_tokens <= 0:
            raise UserError(f"batch_size and max_tokens must be positive, got {batch_size}, {max_tokens}")
        self.root = root
        self.use = {"stereoset": stereoset, "stereoset_inter": stereoset and intersentence, "crows": crows,
                    "bbq": bbq}
        self.limits = {"stereoset": stereoset_items, "crows": crows_items, "bbq": bbq_items}
        self.bbq_categories = bbq_categories
        self.probes = probes
        self.extra = _extra_benchmarks(benchmarks)
        self.batch_size, self.max_tokens = int(batch_size), int(max_tokens)
        self.compile_engine = bool(compile_engine)
        self.calibration_max_len = int(calibration_max_len)
        if isinstance(validation_items, bool) or not isinstance(validation_items, int) or validation_items < 0:
            raise UserError(f"validation_items must be an int ≥ 0, got {validation_items!r}")
        self.validation_items = validation_items
        self.heldout: dict[str, list] = {}
        if train_sentences <= 0 or train_batch_size <= 0 or not 0.0 < float(train_mask_prob) < 1.0:
            raise UserError(f"train_sentences and train_batch_size must be positive and train_mask_prob in (0, 1), "
                            f"got {train_sentences}, {train_batch_size}, {train_mask_prob}")
        self.train_corpus = train_corpus
        self.train_sentences, self.train_batch_size = int(train_sentences), int(train_batch_size)
        self.train_mask_prob = float(train_mask_prob)
        self._model_name: Optional[str] = None
        self._corpus_spec = None  # the embedded default's TinyBertSpec, set by the task when it loads that model
        self.seed = int(seed)
        self.target_name = "preferred_option"
        self.num_classes = 3
        self.sensitive_names = ["benchmark", "domain"]
        self.items: dict[str, list] = {}
        self._sizes: dict[str, dict] = {}
        self._skipped: dict[str, dict] = {}
        self._calibration_text: list[str] = []
        self.tokenizer = None
        self._ready = False

    # ----------------------------------------------------------------- task and tokenizer
    @property
    def task(self):
        from fairq.text.task import TextTask

        return TextTask(input_keys=("input_ids", "attention_mask"), sensitive_names=tuple(self.sensitive_names),
                        datamodule=self)

    def set_tokenizer(self, tok, *, model_name: Optional[str] = None, corpus_spec=None) -> None:
        """The run's tokenizer; ``model_name`` (for messages) and, for the embedded default, the
        :class:`~fairq.text.embedded.TinyBertSpec` its pre-training corpus was generated from."""
        self.tokenizer = tok
        self._model_name, self._corpus_spec = model_name, corpus_spec

    def tokenizer_or_fail(self):
        if self.tokenizer is None:
            raise RuntimeError("TextDataModule has no tokenizer yet: the task sets it when it loads the model")
        return self.tokenizer

    def skipped_while_scoring(self, benchmark: str, skipped) -> None:
        if len(skipped):
            if benchmark not in self._skipped.get("scoring", {}):
                skipped.log(f"{benchmark} (scoring)")
            self._skipped.setdefault("scoring", {})[benchmark] = skipped.to_dict()

    # ----------------------------------------------------------------- data
    def prepare_data(self) -> None:
        pass

    def setup(self, stage: Optional[str] = None) -> None:
        if self._ready:
            return
        from fairq.text import data as td

        root = Path(self.root) if self.root else None
        if root is None and any(self.use.values()):
            raise td.TextDataError("no data root: set --data.init_args.root to the folder holding "
                                   "stereoset_dev.json, crows_pairs_anonymized.csv and bbq/ (or switch those "
                                   "benchmarks off)")
        if self.use["stereoset"]:
            intra, inter, skipped = td.read_stereoset(root / "stereoset_dev.json")
            skipped.log("StereoSet")
            self._skipped["stereoset"] = skipped.to_dict()
            self.items["stereoset"] = _subset(intra, self.limits["stereoset"], lambda it: it.bias_type, self.seed)
            self.heldout["stereoset"] = self._heldout(intra, self.items["stereoset"], lambda it: it.bias_type)
            if self.use["stereoset_inter"]:
                self.items["stereoset_inter"] = _subset(inter, self.limits["stereoset"], lambda it: it.bias_type,
                                                        self.seed)
            self._sizes["stereoset"] = {"read": len(intra), "scored": len(self.items["stereoset"]),
                                        "intersentence_read": len(inter)}
        if self.use["crows"]:
            pairs, skipped = td.read_crows(root / "crows_pairs_anonymized.csv")
            skipped.log("CrowS-Pairs")
            self._skipped["crows"] = skipped.to_dict()
            self.items["crows"] = _subset(pairs, self.limits["crows"], lambda p: p.bias_type, self.seed)
            self.heldout["crows"] = self._heldout(pairs, self.items["crows"], lambda p: p.bias_type)
            self._sizes["crows"] = {"read": len(pairs), "scored": len(self.items["crows"])}
        if self.use["bbq"]:
            items, skipped = td.read_bbq(root / "bbq", self.bbq_categories)
            skipped.log("BBQ")
            self._skipped["bbq"] = skipped.to_dict()
            self.items["bbq"] = _subset(items, self.limits["bbq"], lambda it: it.category, self.seed,
                                        pair_key=lambda it: (it.category, it.question_index, it.polarity,
                                                             it.question, it.answers))
            self._sizes["bbq"] = {"read": len(items), "scored": len(self.items["bbq"]),
                                  "undetermined_bias_target": sum(it.target < 0 for it in self.items["bbq"])}
        if self.probes:
            from fairq.text.embedded import probes

            self.items["probe_stereoset"], self.items["probe_crows"] = probes()
            self._sizes["probes"] = {"stereoset": len(self.items["probe_stereoset"]),
                                     "crows": len(self.items["probe_crows"])}
        for name, options in self.extra.items():
            self._read_extra(name, options, root)
        from fairq.text.corpus import general_sentences

        self._calibration_text = general_sentences()
        self._ready = True

    def _read_extra(self, name: str, options: dict, root: Optional[Path]) -> None:
        """A registered benchmark's items through its ``reader`` (seeded subset of ``items``, by its ``stratum``)."""
        from fairq.text.benchmarks import get_benchmark

        bench = get_benchmark(name)
        options = dict(options)
        limit = options.pop("items", None)
        items, skipped = bench.reader(root, **options)
        if skipped is not None and len(skipped):
            skipped.log(name)
            self._skipped[name] = skipped.to_dict()
        stratum = bench.stratum or (lambda it: "")
        self.items[name] = _subset(list(items), limit, stratum, self.seed)
        self._sizes[name] = {"read": len(items), "scored": len(self.items[name])}

    def _heldout(self, items: list, scored: list, key) -> list:
        """Up to ``validation_items`` of the items not in ``scored`` (seeded, stratified by ``key``)."""
        taken = {id(it) for it in scored}
        rest = [it for it in items if id(it) not in taken]
        return _subset(rest, self.validation_items, key, self.seed + 1) if self.validation_items else []

    def describe(self) -> dict[str, Any]:
        self.setup()
        return {"dataset": self.dataset_name, "root": str(self.root),
                "benchmarks": {**self.use, **{name: True for name in self.extra}},
                "subset_sizes": self.limits, "subset_seed": self.seed, "sizes": self._sizes,
                "validation_items": {k: len(v) for k, v in self.heldout.items()},
                "training": {"corpus": self.train_corpus or "embedded default's generated corpus (embedded model "
                             "only)", "sentences": self.train_sentences, "batch_size": self.train_batch_size,
                             "mask_prob": self.train_mask_prob, "masking": "80% [MASK] / 10% random / 10% kept"},
                "skipped": self._skipped, "bbq_categories": self.bbq_categories,
                "note": "per-item results in predictions/<cell>.parquet; subsets are seeded and stratified"}

    # ----------------------------------------------------------------- batches (calibration, latency)
    def _text_batches(self, texts: list[str], batch_size: int) -> list[dict]:
        import torch

        tok = self.tokenizer_or_fail()
        out = []
        for s in range(0, len(texts), batch_size):
            enc = tok(texts[s:s + batch_size], padding=True, truncation=True, max_length=self.calibration_max_len,
                      return_tensors="pt")
            out.append({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
                        "sample_id": [f"calib:{s + i}" for i in range(len(enc["input_ids"]))],
                        "target": torch.zeros(len(enc["input_ids"]), dtype=torch.long)})
        return out

    def calibration_dataloader(self, n: int, *, balanced: bool = False, seed: int = 0,
                               batch_size: Optional[int] = None) -> list[dict]:
        """``n`` sentences (a seeded draw) of the general English calibration pool, which no benchmark scores
        (:mod:`fairq.text.corpus`; see the module doc); ``balanced`` has no groups here to balance."""
        self.setup()
        rng = np.random.default_rng([seed, 7919])
        idx = rng.choice(len(self._calibration_text), size=min(n, len(self._calibration_text)), replace=False)
        return self._text_batches([self._calibration_text[i] for i in idx], batch_size or 32)

    def val_dataloader(self) -> "TextValidation":
        """Sentences never scored (as calibration batches), carrying ``.bias_probe``: the held-out benchmark items
        (``validation_items``) as a :class:`fairq.text.probe.TextBiasProbe`, built on first use."""
        return TextValidation(self.calibration_dataloader(128, seed=self.seed + 1), self)

    def split_dataloader(self, split: str, *, batch_size: Optional[int] = None, **_) -> list[dict]:
        """Latency batches: sentences of the calibration pool (the cells' scoring runs through the task)."""
        return self.calibration_dataloader(batch_size or 32, seed=self.seed + 2, batch_size=batch_size or 32)

    def test_dataloader(self) -> list[dict]:
        return self.split_dataloader("test")

    # ----------------------------------------------------------------- training (MLM batches)
    def training_sentences(self) -> list[str]:
        """The seeded MLM training draw (see the module doc); a clear error when the run's model has none."""
        from fairq.text import embedded

        if self.train_corpus not in (None, "embedded"):
            return _read_corpus(Path(self.train_corpus), self.train_sentences, self.seed)
        spec = self._corpus_spec
        if spec is None and self.train_corpus is None:
            raise UserError(
                f"no MLM training corpus for {self._model_name or 'this model'}: methods that train on text "
                "(distill, qat, pruning with finetune_epochs) use the embedded default's generated corpus only for "
                "the embedded default, because that corpus plants a bias. Set --data.init_args.train_corpus to a "
                "text file (one sentence per line), or to 'embedded' to train on the generated corpus anyway "
                "(the training then moves the bias scores being measured)")
        from dataclasses import replace

        # a fresh draw from the pre-training corpus generator (same rates and templates), not its sentences
        return embedded.generate_corpus(replace(spec or embedded.TinyBertSpec(), n_sentences=self.train_sentences,
                                                seed=self.seed + 7))

    def train_dataloader(self):
        """MLM batches of :meth:`training_sentences` (drawn in a seeded random order, masked with the data seed);
        the sentences are read when the loader is first used."""
        from torch.utils.data import DataLoader
        from transformers import DataCollatorForLanguageModeling

        collator = DataCollatorForLanguageModeling(self.tokenizer_or_fail(), mlm_probability=self.train_mask_prob,
                                                   seed=self.seed, return_tensors="pt")
        # no shuffling sampler: it would read the sentences now; the draw itself is in a seeded random order
        return DataLoader(_MLMSentences(self), batch_size=self.train_batch_size, shuffle=False, collate_fn=collator)


class _MLMSentences(Dataset):
    """Tokenized training sentences of a :class:`TextDataModule`, built on first access (see the module doc)."""

    def __init__(self, dm: TextDataModule):
        self.dm, self._enc = dm, None

    def _encodings(self) -> list[dict]:
        if self._enc is None:
            tok = self.dm.tokenizer_or_fail()
            ids = tok(self.dm.training_sentences(), truncation=True, max_length=self.dm.calibration_max_len,
                      return_token_type_ids=False, return_attention_mask=False)["input_ids"]
            self._enc = [{"input_ids": e} for e in ids]
        return self._enc

    def __len__(self) -> int:
        return len(self._encodings())

    def __getitem__(self, i: int) -> dict:
        return self._encodings()[i]


def _read_corpus(path: Path, n: int, seed: int) -> list[str]:
    """A seeded draw of (at most) ``n`` non-empty lines of a UTF-8 text file, in random order."""
    if not path.is_file():
        raise UserError(f"train_corpus {str(path)!r} is not a file: give a UTF-8 text file with one training "
                        "sentence per line (or 'embedded' for the embedded default's generated corpus)")
    lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    if not lines:
        raise UserError(f"train_corpus {str(path)!r} has no non-empty line")
    idx = np.random.default_rng([seed, 1171]).permutation(len(lines))[:n]
    return [lines[i] for i in idx]


class TextValidation(list):
    """The text validation loader: a list of tokenized sentence batches (what methods that run the model on
    validation inputs read) with ``bias_probe()``: the held-out scored items for methods that select on a bias
    measure (never the items a cell is scored on)."""

    def __init__(self, batches: list, datamodule: TextDataModule):
        super().__init__(batches)
        self.datamodule = datamodule

    def bias_probe(self):
        from fairq.text.probe import TextBiasProbe

        dm = self.datamodule
        dm.setup()
        return TextBiasProbe(dm.heldout, dm.tokenizer_or_fail(), batch_size=dm.batch_size, max_tokens=dm.max_tokens)
