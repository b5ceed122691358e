"""Real INT4 weight-only Linear (``backend="int4"``) vs simulated INT4 weights vs FP32, in one run.

    python benchmarks/bench_int4.py                     # ViT-S/16 (224 px, batch 8) and a 4-layer BERT-base
    python benchmarks/bench_int4.py --models bert --repeats 3

For each model: the layers that ran the int4 kernel and those left simulated (no kernel: convs, odd-sized
heads); how far real INT4 and simulated INT4 (``simulation="layer_input"``, ``act_bits=None``: the same codes)
are apart — largest |Δ logit| ÷ largest |logit| and the share of inputs with the same argmax; forward time of
each ÷ FP32, timed alternately with FP32 (:func:`fairq.compression.measure_latency_paired`); and the bytes
``torch.save(state_dict)`` writes ÷ FP32's. Random-init models on random inputs (time and size do not depend on
the weights; agreement of near-tied random logits is a strict test, not a task accuracy).
"""
from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fairq.compression import PTQConfig, measure_latency_paired, quantize  # noqa: E402
from fairq.compression.backends.int4 import int4_layers, simulated_layers  # noqa: E402
from fairq.compression.core.data import logits_of  # noqa: E402
from fairq.models import create_model  # noqa: E402


def _bytes(model) -> int:
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.getbuffer().nbytes


def _build(name: str, args):
    torch.manual_seed(0)
    if name == "vit":
        model = create_model("vit_small_patch16_224", num_classes=1000, pretrained=False).eval()
        return "vit_small_patch16_224", model, torch.randn(args.batch_size, 3, 224, 224)
    import transformers

    cfg = transformers.BertConfig(num_hidden_layers=4, num_labels=16)  # BERT-base width, 4 layers
    model = transformers.BertForSequenceClassification(cfg).eval()
    ids = torch.randint(0, cfg.vocab_size, (args.batch_size, 128))
    return "bert-base(4 layers)", model, dict(input_ids=ids, attention_mask=torch.ones_like(ids))


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["vit", "bert"], choices=["vit", "bert"])
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    for key in args.models:
        name, model, x = _build(key, args)
        calib = [x]
        real = quantize(model, PTQConfig(weight_bits=4, act_bits=None, backend="int4"))
        sim = quantize(model, PTQConfig(weight_bits=4, act_bits=None, backend="simulated", simulation="layer_input"),
                       calib)

        def run(m):
            with torch.inference_mode():
                return logits_of(m(**x) if isinstance(x, dict) else m(x))

        out_r, out_s = run(real), run(sim)
        row = dict(model=name, int4_layers=len(int4_layers(real)), simulated=simulated_layers(real),
                   rel_diff=((out_r - out_s).abs().max() / out_s.abs().max()).item(),
                   argmax_agree=(out_r.argmax(-1) == out_s.argmax(-1)).float().mean().item(),
                   size_ratio=_bytes(real) / _bytes(model))
        for label, m in (("int4", real), ("sim", sim)):
            lat = measure_latency_paired(m, model, x, warmup=1, repeats=args.repeats)
            row[f"{label}_ratio"], row[f"{label}_ms"] = lat["latency_ratio_vs_fp32"], lat["latency_ms"]
            row["fp32_ms"] = lat["reference_latency_ms"]
        rows.append(row)
        print(f"[bench_int4] {name}: int4 {row['int4_ratio']:.2f}x FP32, simulated {row['sim_ratio']:.2f}x", flush=True)
    print(f"\nbatch {args.batch_size}, {args.threads} threads, median of {args.repeats} alternated pairs, "
          f"torch {torch.__version__}")
    header = (f"{'model':<22}{'int4 layers':>12}{'fp32 ms':>9}{'int4/fp32':>10}{'sim/fp32':>10}{'size':>7}"
              f"{'|Δ|/max':>9}{'argmax=':>9}  simulated (no kernel)")
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['model']:<22}{r['int4_layers']:>12}{r['fp32_ms']:>9.0f}{r['int4_ratio']:>9.2f}x"
              f"{r['sim_ratio']:>9.2f}x{r['size_ratio']:>7.3f}{r['rel_diff']:>9.1e}{r['argmax_agree']:>9.1%}  "
              f"{', '.join(r['simulated']) or '-'}")
    print("size = torch.save(state_dict) bytes INT4 model / FP32 (embeddings and un-kerneled layers included); "
          "|Δ|/max = max |real - simulated logit| / max |simulated logit|")
    return rows


if __name__ == "__main__":
    main()
