"""Where each official text-benchmark file comes from, and the error a missing one raises (naming the file, the
expected layout and its source). Its own module so that every reader (``data``, ``bbq``) can use it without
importing each other."""
from __future__ import annotations

from pathlib import Path

from fairq.errors import UserError

#: Where each official file comes from, and the layout the reader expects (quoted in missing-file errors).
SOURCES = {
    "stereoset": ("dev.json from https://github.com/moinnadeem/StereoSet (data/dev.json), CC BY-SA 4.0",
                  "a JSON object {'version', 'data': {'intrasentence': [...], 'intersentence': [...]}}, each example "
                  "{'id', 'target', 'bias_type', 'context', 'sentences': [{'sentence', 'id', 'gold_label'}]}"),
    "crows": ("crows_pairs_anonymized.csv from https://github.com/nyu-mll/crows-pairs (data/), CC BY-SA 4.0",
              "a CSV with columns sent_more, sent_less, stereo_antistereo, bias_type"),
    "bbq": ("the per-category <Category>.jsonl files from https://github.com/nyu-mll/BBQ (data/), CC BY 4.0",
            "one JSON object a line with example_id, question_index, question_polarity, context_condition, "
            "category, answer_info, context, question, ans0..ans2, label"),
}


class TextDataError(UserError, ValueError):
    """A text benchmark file is missing or unreadable as a whole."""


def require_file(path: Path, kind: str) -> Path:
    path = Path(path)
    if not path.is_file():
        source, layout = SOURCES[kind]
        raise TextDataError(f"{path} not found. Expected {layout}. Get {source} and put it there (or point "
                            f"--data.init_args.root at the folder holding it).")
    return path
