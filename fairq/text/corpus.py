"""General English sentences that no benchmark scores: the text calibration pool.

``general_english.txt`` (beside this file) holds example sentences of WordNet 3.0's glosses (the quoted usage
examples after a synset's definition, e.g. "he ran the race in record time"), a seeded draw of those with 6–30
words. WordNet is a dictionary: its examples are about everything, and none of them is a StereoSet, CrowS-Pairs
or BBQ item, so calibration statistics computed on them do not come from the text a cell is scored on.
Regenerate (Debian / Ubuntu package ``wordnet-base``)::

    python -m fairq.text.corpus /usr/share/wordnet

The file carries WordNet's licence notice, as that licence requires of every copy.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np

PATH = Path(__file__).with_name("general_english.txt")
N_SENTENCES, SEED, MIN_WORDS, MAX_WORDS = 1500, 0, 6, 30
NOTICE = """WordNet 3.0 Copyright 2006 by Princeton University.  All rights reserved.
Permission to use, copy, modify and distribute this software and database and its documentation for any purpose
and without fee or royalty is hereby granted, provided that you agree to comply with the following copyright
notice and statements, including the disclaimer, and that the same appear on ALL copies of the software,
database and documentation, including modifications that you make for internal use or for distribution.
THIS SOFTWARE AND DATABASE IS PROVIDED "AS IS" AND PRINCETON UNIVERSITY MAKES NO REPRESENTATIONS OR WARRANTIES,
EXPRESS OR IMPLIED.  BY WAY OF EXAMPLE, BUT NOT LIMITATION, PRINCETON UNIVERSITY MAKES NO REPRESENTATIONS OR
WARRANTIES OF MERCHANTABILITY OR FITNESS FOR ANY PARTICULAR PURPOSE OR THAT THE USE OF THE LICENSED SOFTWARE,
DATABASE OR DOCUMENTATION WILL NOT INFRINGE ANY THIRD PARTY PATENTS, COPYRIGHTS, TRADEMARKS OR OTHER RIGHTS.
The name of Princeton University or Princeton may not be used in advertising or publicity pertaining to
distribution of the software and/or database.  Title to copyright in this software, database and any
associated documentation shall at all times remain with Princeton University and LICENSEE agrees to preserve
same."""


def wordnet_examples(root: str | Path) -> list[str]:
    """Every quoted usage example of the glosses in WordNet's ``data.{noun,verb,adj,adv}`` (sorted, unique)."""
    out = set()
    for pos in ("noun", "verb", "adj", "adv"):
        for line in (Path(root) / f"data.{pos}").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("  ") or "|" not in line:
                continue  # the licence header
            for ex in re.findall(r'"([^"]+)"', line.split("|", 1)[1]):
                ex = ex.strip()
                if MIN_WORDS <= len(ex.split()) <= MAX_WORDS:
                    out.add(ex)
    return sorted(out)


def general_sentences() -> list[str]:
    """The shipped sentences (comment lines, the licence notice, skipped)."""
    return [ln for ln in PATH.read_text(encoding="utf-8").splitlines() if ln.strip() and not ln.startswith("#")]


def main(argv=None) -> int:
    root = (argv or sys.argv[1:] or ["/usr/share/wordnet"])[0]
    pool = wordnet_examples(root)
    idx = np.sort(np.random.default_rng(SEED).choice(len(pool), size=min(N_SENTENCES, len(pool)), replace=False))
    head = [f"# {len(idx)} of WordNet 3.0's {len(pool)} gloss usage examples with {MIN_WORDS}-{MAX_WORDS} words",
            f"# (seed {SEED}); regenerate: python -m fairq.text.corpus {root}", "#",
            *[f"# {ln}" for ln in NOTICE.splitlines()]]
    PATH.write_text("\n".join(head + [pool[i] for i in idx]) + "\n", encoding="utf-8")
    print(f"wrote {PATH} ({len(idx)} sentences of {len(pool)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
