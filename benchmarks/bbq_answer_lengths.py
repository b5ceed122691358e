"""How many word pieces BBQ's answers take, "unknown" answers apart from the others: the reason fairq's BBQ headline
is the mean log-probability per word piece rather than the sum (docs/user-guide/text.md).

    python benchmarks/bbq_answer_lengths.py [--bbq ../shared/data/text/bbq]

Tokenizes every answer as the scorer does (``fairq.text.scoring.build_bbq``: the answer text alone, bert-base-uncased
WordPiece from the PyPI package) and prints the mean number of pieces per answer kind.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fairq.text.data import read_bbq  # noqa: E402
from fairq.text.scoring import HFTokenizer  # noqa: E402
from fairq.text.tokenizer import bert_uncased_tokenizer  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bbq", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "text" / "bbq"))
    args = p.parse_args(argv)
    items, _ = read_bbq(args.bbq)
    tok = HFTokenizer(bert_uncased_tokenizer())
    unknown, other = [], []
    for it in items:
        for i, a in enumerate(it.answers):
            (unknown if i == it.unknown else other).append(len(tok.encode(a)))
    print(f"items: {len(items)} in {len({it.category for it in items})} categories ({args.bbq})")
    print(f"unknown answers: {sum(unknown) / len(unknown):.2f} word pieces (n={len(unknown)})")
    print(f"other answers:   {sum(other) / len(other):.2f} word pieces (n={len(other)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
