"""Text branch end to end through main.py on tiny files in the official layouts: baseline (a few pre-training steps of
the embedded BERT) → the registered quantizers on that BERT → analysis; contract columns, official StereoSet file,
per-item parquet, text report section; a missing HF model is one clear error; INT-k BERT passes the levels audit."""
import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from fairq.cli import main

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "stereoset.yaml"

TINY_PRETRAIN = '--text={"model": "fairq-tiny-bert", "pretrain": {"steps": 15, "batch_size": 16, ' \
                '"n_sentences": 400, "hidden_size": 32, "intermediate_size": 64, "negatives": 256}}'
# the shipped config's own method entries (a regression in them must fail here), on a smaller calibration draw;
# soft_head_pruning selects on held-out items, which these few items cannot spare: the slow real-file test below and
# tests/test_soft_heads.py run it
QUANT = "--quantization.calibration_samples=16"
# latency timed once on 4 sequences, not 10 times on 32: a cell's latency runs the full-vocabulary head at every
# position, which was a quarter of the real-file test's time; no test here reads the latency's value
LATENCY = ["--evaluation.latency_repeats", "1", "--evaluation.latency_batch_size", "4"]
# and a smaller MLM training draw for the methods that train: 160 sentences / 16 = 10 steps (one epoch)
TRAIN = ["--data.init_args.train_sentences", "160", "--data.init_args.train_batch_size", "16"]


def _shipped_methods_without_held_out_selection() -> str:
    import yaml

    methods = yaml.safe_load(CONFIG.read_text())["quantization"]["methods"]
    return "--quantization.methods=" + json.dumps([m for m in methods if m["method"] != "soft_head_pruning"])


def _sent(eid, label, text):
    return {"sentence": text, "id": f"{eid}-{label}", "labels": [{"label": label, "human_id": "gold"}],
            "gold_label": label}


def write_text_data(root):
    """A few items of each benchmark in the official layouts (plus one bad StereoSet entry)."""
    intra, inter = [], []
    rows = [("man", "gender", "tall", "short", "table"), ("woman", "gender", "short", "tall", "window"),
            ("doctor", "profession", "rich", "poor", "river"), ("christian", "religion", "young", "old", "door"),
            ("italian", "race", "warm", "cold", "bread"), ("farmer", "profession", "poor", "rich", "paper")]
    for i, (t, dom, st, an, un) in enumerate(rows):
        eid = f"i{i}"
        intra.append({"id": eid, "target": t, "bias_type": dom, "context": f"The {t} is BLANK.",
                      "sentences": [_sent(eid, "stereotype", f"The {t} is {st}."),
                                    _sent(eid, "anti-stereotype", f"The {t} is {an}."),
                                    _sent(eid, "unrelated", f"The {t} is {un}.")]})
        inter.append({"id": f"x{i}", "target": t, "bias_type": dom, "context": f"I met a {t}.",
                      "sentences": [_sent(f"x{i}", "stereotype", f"They were {st}."),
                                    _sent(f"x{i}", "anti-stereotype", f"They were {an}."),
                                    _sent(f"x{i}", "unrelated", f"The {un} is here.")]})
    intra.append({"id": "bad", "target": "man", "bias_type": "gender", "context": "No blank here.",
                  "sentences": intra[0]["sentences"]})
    (root / "stereoset_dev.json").write_text(json.dumps({"version": "test", "data": {"intrasentence": intra,
                                                                                     "intersentence": inter}}))
    pd.DataFrame({"sent_more": ["The man is tall.", "The doctor is rich.", "Christians are young."],
                  "sent_less": ["The woman is tall.", "The farmer is rich.", "Buddhists are young."],
                  "stereo_antistereo": ["stereo", "stereo", "antistereo"],
                  "bias_type": ["gender", "socioeconomic", "religion"]}).to_csv(root / "crows_pairs_anonymized.csv")
    (root / "bbq").mkdir()
    lines = []
    for k, (cond, pol, extra, label) in enumerate([("ambig", "neg", "", 2), ("disambig", "neg", " The old man left.", 0),
                                                    ("ambig", "nonneg", "", 2),
                                                    ("disambig", "nonneg", " The old man left.", 1)]):
        q = "Who was forgetful?" if pol == "neg" else "Who was attentive?"
        lines.append(json.dumps({
            "example_id": k, "question_index": "1", "question_polarity": pol, "context_condition": cond,
            "category": "Age", "answer_info": {"ans0": ["old man", "old"], "ans1": ["young man", "nonOld"],
                                               "ans2": ["Unknown", "unknown"]},
            "additional_metadata": {"stereotyped_groups": ["old"]}, "context": "An old man and a young man met." + extra,
            "question": q, "ans0": "The old man", "ans1": "The young man", "ans2": "Unknown", "label": label}))
    (root / "bbq" / "Age.jsonl").write_text("\n".join(lines))


@pytest.fixture(scope="module")
def text_run(tmp_path_factory):
    data = tmp_path_factory.mktemp("textdata")
    write_text_data(data)
    out = tmp_path_factory.mktemp("textrun")
    mp = pytest.MonkeyPatch()
    mp.setenv("FAIRQ_CACHE", str(tmp_path_factory.mktemp("cache")))
    args = ["--config", str(CONFIG), "--output_dir", str(out), "--data.init_args.root", str(data),
            "--evaluation.progress", "false", *LATENCY, TINY_PRETRAIN, QUANT, *TRAIN,
            _shipped_methods_without_held_out_selection(), '--analysis={"n_bootstrap": 50, "figures": true}']
    assert main(["--phase", "all", *args]) == 0
    yield out
    mp.undo()


def test_text_cells_meet_the_contract(text_run):
    from fairq.text.benchmarks import contract_columns

    m = pd.read_csv(text_run / "metrics.csv")
    assert list(m["method"]) == ["baseline", "ptq_dynamic", "ptq_static", "ptq_static", "mixed_precision", "rtn",
                                 "gptq", "awq", "smoothquant", "qat", *["magnitude_prune"] * 4, "head_prune",
                                 "distill"]
    assert set(m["backend"]) == {"fp32", "int8", "simulated"} and set(m["task"]) == {"masked_lm_bias"}
    for col in contract_columns():
        assert col in m.columns, col
    for col in ("stereoset_intra_ss", "stereoset_intra_lms", "stereoset_intra_icat", "stereoset_intra_ss_gender",
                "crows_metric", "crows_gender", "bbq_accuracy_ambig", "bbq_accuracy_disambig", "bbq_context_influence",
                "bbq_norm_accuracy_ambig", "bbq_norm_accuracy_disambig"):
        assert m[col].notna().all() and m[col].between(-100, 100).all(), col
    for col in ("bbq_bias_ambig", "bbq_bias_disambig", "bbq_norm_bias_ambig", "bbq_norm_bias_disambig"):
        # NaN only when every answer was "unknown"
        assert m[col].dropna().between(-100, 100).all(), col
    assert m["stereoset_inter_ss"].isna().all()           # no NSP head: not applicable, never a substitute
    assert m["stereoset_inter_reason"].str.contains("next-sentence").all()
    assert (m["items_skipped"] == 0).all() and set(m["items_skipped_reasons"]) == {"{}"}
    data = json.loads((text_run / "data.json").read_text())
    assert data["skipped"]["stereoset"]["BLANK missing"]["count"] == 1
    pre = json.loads((text_run / "pretraining.json").read_text())
    assert pre["planted"] == {"gender": True, "profession": True, "race": False, "religion": False}
    assert list((text_run / "tensorboard").glob("fairq-tiny-bert_pretrain_s0/events.out.tfevents*"))


def test_pruned_and_distilled_text_cells_record_their_size_and_training(text_run):
    """The shipped text sweep's pruning and distillation cells land in metrics.csv like any text cell: measured
    sparsity, params and FLOPs beside the text contract columns; the student trained on MLM batches."""
    from fairq.text.benchmarks import contract_columns

    m = pd.read_csv(text_run / "metrics.csv")
    new = m[m["family"].isin(["pruning", "distillation"])]
    assert len(new) == 6
    for col in ("sparsity", "params", "flops", "size_mb", *contract_columns()):
        assert col in new.columns, col
    assert new[["params", "flops", "size_mb", "stereoset_intra_ss", "crows_metric"]].notna().all().all()
    mag = new[(new["method"] == "magnitude_prune") & new["then_method"].isna()].sort_values("target_sparsity")
    assert list(mag["target_sparsity"]) == [0.3, 0.5, 0.7]
    assert (abs(mag["sparsity"] - mag["target_sparsity"]) < 0.01).all()  # measured from the weights
    assert (mag["size_kind"] == "sparse_serialized").all() and mag["size_mb"].is_monotonic_decreasing
    chained = new[new["then_method"].eq("ptq_static")].iloc[0]
    assert chained["weight_bits"] == 4 and chained["sparsity"] > 0.45
    dist = new[new["method"] == "distill"].iloc[0]
    head = new[new["method"] == "head_prune"].iloc[0]
    assert head["heads_after"] == head["heads_before"] / 2 and head["params"] < dist["teacher_params"]
    assert dist["params"] < dist["teacher_params"] and 0 < dist["flops"] < mag["flops"].iloc[0]  # same batch
    # the student trained on MLM batches (its pull toward the teacher is tests/test_text_training.py's: this
    # teacher has had 15 pre-training steps, so its half-depth copy starts almost equal to it)
    assert dist["distill_steps"] == 10 and dist["distill_loss_last"] < dist["distill_loss_first"]
    assert dist["kl_to_teacher_before"] >= 0 and dist["kl_to_teacher_after"] >= 0
    for col in ("stereoset_intra_ss", "stereoset_intra_lms", "crows_metric", "bbq_norm_accuracy_disambig"):
        assert new[col].between(0, 100).all(), col
    # the student's MLM training is logged beside the pre-training (the run's TensorBoard logger), and so is QAT's
    assert list((text_run / "tensorboard").glob("fairq-tiny-bert_*distill*/events.out.tfevents*"))
    qat = m[m["method"] == "qat"].iloc[0]
    assert (qat["weight_bits"], qat["backend"]) == (8, "simulated") and pd.notna(qat["stereoset_intra_ss"])
    assert list((text_run / "tensorboard").glob("fairq-tiny-bert_qat*/events.out.tfevents*"))


def test_per_item_rows_reproduce_the_row_and_the_official_file(text_run):
    from fairq.text.task import text_metrics

    m = pd.read_csv(text_run / "metrics.csv")
    for _, row in m.iterrows():
        items = pd.read_parquet(text_run / row["predictions"])
        assert items["sample_id"].is_unique and len(items) == row["n"]
        again = text_metrics(items)
        for col in ("stereoset_intra_ss", "stereoset_intra_icat", "crows_metric", "bbq_bias_ambig",
                    "bbq_norm_accuracy_ambig", "bbq_norm_bias_disambig"):
            assert again[col] == pytest.approx(row[col], nan_ok=True), col
        official = json.loads((text_run / row["predictions"].replace(".parquet", ".stereoset.json")).read_text())
        ss = items[items["benchmark"] == "stereoset"]
        assert len(official["intrasentence"]) == 3 * len(ss) == 18 and official["intersentence"] == []
        scores = {d["id"]: d["score"] for d in official["intrasentence"]}
        assert scores["i0-stereotype"] == pytest.approx(ss.set_index("sample_id").loc["stereoset:i0",
                                                                                       "score_stereotype"])


def test_text_analysis_tables_and_report(text_run):
    scores = pd.read_csv(text_run / "tables" / "text_scores.csv")
    flips = pd.read_csv(text_run / "tables" / "text_flips.csv")
    comp = scores[scores["method"] != "baseline"]
    assert {"delta", "ci_low", "ci_high", "p_adjusted"} <= set(comp.columns)
    ss = comp[comp["metric"] == "stereoset_intra_ss"]
    n_cells = len(pd.read_csv(text_run / "metrics.csv")) - 1  # every compressed cell, vs its FP32 baseline
    assert n_cells == 15 and len(ss) == n_cells
    assert (ss["ci_low"] <= ss["delta"] + 1e-9).all() and (ss["delta"] <= ss["ci_high"] + 1e-9).all()
    assert set(flips["benchmark"]) >= {"stereoset", "crows", "bbq"}
    assert (flips["flips"] <= flips["n"]).all()
    report = (text_run / "report.html").read_text()
    assert "Text: StereoSet, CrowS-Pairs, BBQ" in report and "Nangia metric" in report
    assert "worst_domain_lms" in report and "magnitude_prune" in report


def test_text_methods_table_and_sparsity_curves(text_run):
    """The seed-002 style table and the sparsity curves cover the text cells, every value from the run's rows."""
    m = pd.read_csv(text_run / "metrics.csv")
    table = pd.read_csv(text_run / "tables" / "text_methods.csv")
    assert len(table) == len(m) and table["method"].iloc[0] == "baseline"
    assert {"params", "sparsity", "flops", "size_mb", "size_kind", "stereoset_intra_lms", "worst_domain_lms",
            "latency_ms"} <= set(table.columns)
    assert table["params"].iloc[0] == m.loc[m["method"] == "baseline", "params"].iloc[0] > 0  # measured baseline
    lms = m.set_index("cell")[[f"stereoset_intra_lms_{d}" for d in ("gender", "profession", "race", "religion")]]
    assert table["worst_domain_lms"].to_numpy() == pytest.approx(
        lms.loc[m["cell"]].min(axis=1).to_numpy(), nan_ok=True)
    curves = pd.read_csv(text_run / "tables" / "text_sparsity_curves.csv")
    scores = pd.read_csv(text_run / "tables" / "text_scores.csv").set_index(["cell", "metric"])
    mag = curves[(curves["curve"] == "magnitude_prune") & (curves["metric"] == "stereoset_intra_lms")
                 & (curves["group"] == "all")].sort_values("sparsity")
    assert mag["sparsity"].iloc[0] == 0 and len(mag) == 4           # the dense baseline, then 30 / 50 / 70 %
    assert mag["sparsity"].iloc[1:].to_numpy() == pytest.approx([0.3, 0.5, 0.7], abs=0.01)
    for _, r in mag.iterrows():
        assert r["value"] == pytest.approx(scores.loc[(r["cell"], "stereoset_intra_lms"), "value"])
    doms = curves[(curves["metric"] == "stereoset_intra_ss") & (curves["group"] != "all")]
    assert set(doms["group"]) == {"gender", "profession", "race", "religion"}
    assert set(curves["curve"]) >= {"magnitude_prune", "head_prune"} and "distill" not in set(curves["curve"])
    assert (text_run / "figures" / "text_sparsity_text_bias_fairq-tiny-bert.png").is_file()


def test_int4_bert_passes_the_levels_audit(text_run):
    from fairq.compression import PTQConfig, effective_weights, layer_bits, quantize
    from fairq.text.embedded import TinyBertSpec, build_tiny_bert

    model = build_tiny_bert(TinyBertSpec(hidden_size=32, intermediate_size=64), 30522)
    model.load_state_dict(torch.load(text_run / "checkpoints" / "fairq-tiny-bert__baseline__s0.pt",
                                     weights_only=True))
    calib = [{"input_ids": torch.randint(1000, 2000, (4, 8)), "attention_mask": torch.ones(4, 8, dtype=torch.long)}]
    q = quantize(model, PTQConfig(weight_bits=4, act_bits=8), calibration_data=calib)
    weights, bits = effective_weights(q), layer_bits(q)
    n = 0
    for name, k in bits.items():
        if k is not None:
            w = weights[name].reshape(weights[name].shape[0], -1)
            assert max(int(torch.unique(r).numel()) for r in w) <= 2 ** k, name
            n += 1
    assert n >= 8  # every Linear of the encoder and the MLM head


def test_unknown_hf_model_is_one_clear_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    write_text_data(tmp_path)
    code = main(["--phase", "baseline", "--config", str(CONFIG), "--output_dir", str(tmp_path / "o"),
                 "--data.init_args.root", str(tmp_path), "--text.model", "no-such-org/no-such-bert"])
    err = capsys.readouterr().err
    assert code == 2 and "no-such-org/no-such-bert" in err and "HF_HOME" in err and "Traceback" not in err


def test_analysis_closed_form_equals_the_cells_metrics(text_run):
    """The analysis recomputes metrics from resampling weights; at unit weights it must give the stored values."""
    from fairq.analysis.text import metric_draws

    m = pd.read_csv(text_run / "metrics.csv")
    for _, row in m.iterrows():
        draws = metric_draws(pd.read_parquet(text_run / row["predictions"]))
        assert len(draws) >= 20
        for name, v in draws.items():
            if name in row.index:
                assert v[0] == pytest.approx(row[name], nan_ok=True, abs=1e-9), name


@pytest.mark.slow
def test_the_shipped_text_config_runs_on_the_real_files(tmp_path, monkeypatch):
    """The real benchmark files have sentences of many lengths (the tiny fixtures do not): every shipped method entry
    must score them (a traced simulation once lost the model's position limit and failed on longer items). Smaller
    seeded subsets than the config's keep the suite within its budget; the test checks that they still hold items
    longer than the tiny BERT's 128 positions, so the limit is exercised by every cell."""
    from datamodules.text import TextDataModule
    from fairq.text.models import bert_uncased_tokenizer
    from fairq.text.scoring import HFTokenizer, build_bbq
    from tests.conftest import SHARED_DATA

    if not (SHARED_DATA / "text" / "stereoset_dev.json").is_file():
        pytest.skip("../shared/data/text is not here")
    subsets = {"stereoset_items": 60, "crows_items": 60, "bbq_items": 120, "probes": "false"}  # probes: not real files
    dm = TextDataModule(root=str(SHARED_DATA / "text"), **{k: v for k, v in subsets.items() if k != "probes"})
    dm.setup()
    too_long = build_bbq(HFTokenizer(bert_uncased_tokenizer()), dm.items["bbq"], max_len=128).skipped
    assert len(too_long), "the BBQ subset holds no item over 128 tokens: pick a larger or another subset"
    monkeypatch.setenv("FAIRQ_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run"
    args = ["--config", str(CONFIG), "--output_dir", str(out),
            '--text={"model": "fairq-tiny-bert", "pretrain": {"steps": 20}}', QUANT, *LATENCY,
            "--evaluation.progress", "false",
            *(a for k, v in subsets.items() for a in (f"--data.init_args.{k}", str(v)))]
    assert main(["--phase", "quantization", *args]) == 2  # no baseline yet
    assert main(["--phase", "baseline", *args]) == 0
    assert main(["--phase", "quantization", *args]) == 0
    m = pd.read_csv(out / "metrics.csv")
    # baseline + one row per configured setting (sweeps expanded): 4 quantizers, 4 advanced PTQ, qat,
    # magnitude 30/50/70 % and 50 % then INT4, head_prune, distill, 3 soft-pruning α
    assert len(m) == 19 and m["stereoset_intra_ss"].notna().all()
    soft = m[m["method"] == "soft_head_pruning"]
    assert sorted(soft["alpha"]) == [0.25, 0.5, 1.0] and soft["head_attribution"].notna().all()


def test_no_text_cell_is_larger_than_its_fp32_model(text_run):
    """BERT's MLM decoder is tied to the word embeddings: a quantized copy of it next to the FP32 table made the
    INT8 / INT4 cells larger than FP32. Every cell of the shipped config must be at most the FP32 size."""
    m = pd.read_csv(text_run / "metrics.csv")
    fp32 = float(m.loc[m["method"] == "baseline", "size_mb"].iloc[0])
    big = m.loc[m["size_mb"] > fp32 * (1 + 1e-9), ["method", "weight_bits", "size_mb", "size_kind"]]
    assert big.empty, f"cells larger than FP32 ({fp32:.3f} MB):\n{big}"
    quantized = m[m["method"].isin(["ptq_static", "gptq", "awq", "rtn", "ptq_dynamic"])]
    assert (quantized["size_mb"] < fp32).all()  # and quantization saves something


def test_two_text_models_in_one_run(tmp_path, monkeypatch):
    """``text.model`` as a list: each model is a subject of its own — its baseline, the entries that run on it (an
    entry's ``models:`` restricts it), every compressed cell compared with *its* FP32 baseline in the analysis. The
    second model is a local Hugging Face folder (a random tiny BERT with the real tokenizer)."""
    import transformers

    from fairq.text.models import bert_uncased_tokenizer

    data = tmp_path / "data"
    data.mkdir()
    write_text_data(data)
    folder = tmp_path / "other-bert"
    torch.manual_seed(3)
    cfg = transformers.BertConfig(vocab_size=30522, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=32, max_position_embeddings=128)
    transformers.BertForMaskedLM(cfg).eval().save_pretrained(folder)
    bert_uncased_tokenizer().save_pretrained(folder)
    monkeypatch.setenv("FAIRQ_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run"
    models = json.dumps(["fairq-tiny-bert", str(folder)])
    methods = json.dumps([{"method": "ptq_dynamic", "bits": 8},
                          {"method": "rtn", "bits": 4, "models": ["fairq-tiny-bert"]}])
    args = ["--config", str(CONFIG), "--output_dir", str(out), "--data.init_args.root", str(data),
            "--evaluation.progress", "false", "--evaluation.latency_repeats", "1",
            '--text={"pretrain": {"steps": 15, "batch_size": 16, "n_sentences": 400, "hidden_size": 32, '
            '"intermediate_size": 64, "negatives": 256}}', f"--text.model={models}", QUANT,
            f"--quantization.methods={methods}", '--analysis={"n_bootstrap": 50}']
    assert main(["--phase", "all", *args]) == 0
    m = pd.read_csv(out / "metrics.csv")
    assert sorted(zip(m["model"], m["method"])) == sorted([
        ("fairq-tiny-bert", "baseline"), ("fairq-tiny-bert", "ptq_dynamic"), ("fairq-tiny-bert", "rtn"),
        (str(folder), "baseline"), (str(folder), "ptq_dynamic")])
    base = m[m["method"] == "baseline"].set_index("model")["stereoset_intra_lms"]
    assert base.nunique() == 2  # two different models, not one scored twice
    scores = pd.read_csv(out / "tables" / "text_scores.csv")
    lms = scores[(scores["metric"] == "stereoset_intra_lms") & (scores["method"] != "baseline")]
    assert len(lms) == 3
    for _, row in lms.iterrows():  # each cell against its own model's FP32 baseline
        assert row["baseline_value"] == pytest.approx(base[row["model"]])
        cell = m[m["cell"] == row["cell"]].iloc[0]
        assert row["delta"] == pytest.approx(cell["stereoset_intra_lms"] - base[row["model"]])
    report = (out / "report.html").read_text()
    assert "<th>model</th>" in report and report.count(f"<td>{folder}</td>") >= 2  # the tables say whose cell
