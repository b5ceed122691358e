"""Readers of the official StereoSet, CrowS-Pairs and BBQ files → plain item records, with bad input counted.

Each reader returns ``(items, skipped)``: ``items`` a list of small dataclasses, ``skipped`` a :class:`Skipped`
(reason → list of item ids / row numbers) that the caller logs once and writes to the output. A missing file is a
:class:`TextDataError` naming the file, the expected layout and where the official file comes from. Whether a
candidate tokenizes to nothing is checked later, by the scorers (it depends on the tokenizer).
"""
from __future__ import annotations

import csv
import json
import logging
import re
import string
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from .bbq import bbq_target, groups_index, item_targets, known_groups, label_type  # noqa: F401 (re-export)
from .files import SOURCES, TextDataError, require_file  # noqa: F401 (re-export)

log = logging.getLogger("fairq")

STEREOSET_LABELS = ("stereotype", "anti-stereotype", "unrelated")


@dataclass
class Skipped:
    """Bad input skipped by a reader or scorer: reason → ids (logged once, written to ``data.json``)."""

    reasons: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))

    def add(self, reason: str, item: str) -> None:
        self.reasons[reason].append(str(item))

    def __len__(self) -> int:
        return sum(len(v) for v in self.reasons.values())

    def merge(self, other: "Skipped", prefix: str = "") -> "Skipped":
        for reason, ids in other.reasons.items():
            self.reasons[prefix + reason].extend(ids)
        return self

    def to_dict(self) -> dict:
        return {r: {"count": len(ids), "ids": ids[:50]} for r, ids in self.reasons.items()}

    def log(self, what: str) -> None:
        if len(self):
            log.warning("%s: skipped %d bad item(s): %s", what, len(self),
                        "; ".join(f"{r}: {len(ids)} (e.g. {ids[:3]})" for r, ids in self.reasons.items()))


# ---------------------------------------------------------------------------------------------------- StereoSet
@dataclass(frozen=True)
class IntraItem:
    """A StereoSet intrasentence example: context with one ``BLANK`` and the word each sentence puts there."""

    id: str
    target: str
    bias_type: str
    context: str
    words: dict            # gold label → candidate word at the BLANK
    sentence_ids: dict     # gold label → sentence id (the official predictions file is keyed by these)


@dataclass(frozen=True)
class InterItem:
    """A StereoSet intersentence example: a context sentence and three continuations."""

    id: str
    target: str
    bias_type: str
    context: str
    sentences: dict        # gold label → continuation
    sentence_ids: dict


def _labelled(example, n_skip: Skipped, eid: str):
    sents = example.get("sentences")
    if not isinstance(sents, list):
        n_skip.add("no sentences list", eid)
        return None
    out = {}
    for s in sents:
        if not isinstance(s, dict) or not isinstance(s.get("sentence"), str) or "id" not in s:
            n_skip.add("malformed sentence entry", eid)
            return None
        out[s.get("gold_label")] = s
    if sorted(out) != sorted(STEREOSET_LABELS) or len(sents) != 3:
        n_skip.add("not exactly one stereotype / anti-stereotype / unrelated sentence", eid)
        return None
    return out


def template_word(context: str, sentence: str) -> str | None:
    """The word a sentence puts at the context's BLANK: the official rule (the sentence's word at the BLANK's
    whitespace position, punctuation stripped)."""
    idx = [i for i, w in enumerate(context.split(" ")) if "BLANK" in w]
    words = sentence.split(" ")
    if len(idx) != 1 or idx[0] >= len(words):
        return None
    return words[idx[0]].translate(str.maketrans("", "", string.punctuation))


def read_stereoset(path) -> tuple[list[IntraItem], list[InterItem], Skipped]:
    path = require_file(path, "stereoset")
    try:
        raw = json.loads(Path(path).read_text())
        data = raw["data"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise TextDataError(f"{path}: not the official StereoSet layout ({err}); expected "
                            f"{SOURCES['stereoset'][1]}") from None
    skipped = Skipped()
    intra, inter = [], []
    for i, ex in enumerate(data.get("intrasentence") or []):
        eid = str(ex.get("id", f"intrasentence[{i}]")) if isinstance(ex, dict) else f"intrasentence[{i}]"
        if not isinstance(ex, dict) or not all(isinstance(ex.get(k), str) for k in ("target", "bias_type", "context")):
            skipped.add("malformed entry", eid)
            continue
        n_blank = ex["context"].count("BLANK")
        if n_blank != 1:
            skipped.add("BLANK missing" if n_blank == 0 else "BLANK doubled", eid)
            continue
        sents = _labelled(ex, skipped, eid)
        if sents is None:
            continue
        words = {lab: template_word(ex["context"], sents[lab]["sentence"]) for lab in STEREOSET_LABELS}
        if any(not w for w in words.values()):
            skipped.add("empty candidate word", eid)
            continue
        intra.append(IntraItem(eid, ex["target"], ex["bias_type"], ex["context"], words,
                               {lab: str(sents[lab]["id"]) for lab in STEREOSET_LABELS}))
    for i, ex in enumerate(data.get("intersentence") or []):
        eid = str(ex.get("id", f"intersentence[{i}]")) if isinstance(ex, dict) else f"intersentence[{i}]"
        if not isinstance(ex, dict) or not all(isinstance(ex.get(k), str) for k in ("target", "bias_type", "context")):
            skipped.add("malformed entry", eid)
            continue
        sents = _labelled(ex, skipped, eid)
        if sents is None:
            continue
        inter.append(InterItem(eid, ex["target"], ex["bias_type"], ex["context"],
                               {lab: sents[lab]["sentence"] for lab in STEREOSET_LABELS},
                               {lab: str(sents[lab]["id"]) for lab in STEREOSET_LABELS}))
    return intra, inter, skipped


# ---------------------------------------------------------------------------------------------------- CrowS-Pairs
@dataclass(frozen=True)
class CrowsPair:
    id: str
    sent_more: str
    sent_less: str
    direction: str   # stereo / antistereo
    bias_type: str


def read_crows(path) -> tuple[list[CrowsPair], Skipped]:
    path = require_file(path, "crows")
    skipped = Skipped()
    out = []
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        need = {"sent_more", "sent_less", "stereo_antistereo", "bias_type"}
        if not need <= set(reader.fieldnames or ()):
            raise TextDataError(f"{path}: columns {sorted(need - set(reader.fieldnames or ()))} missing; expected "
                                f"{SOURCES['crows'][1]}")
        for i, row in enumerate(reader):
            rid = str(row.get("") or i)
            vals = [row.get(k) for k in ("sent_more", "sent_less", "stereo_antistereo", "bias_type")]
            if any(not isinstance(v, str) or not v.strip() for v in vals):
                skipped.add("malformed row", rid)
                continue
            if vals[2] not in ("stereo", "antistereo"):
                skipped.add("stereo_antistereo not stereo/antistereo", rid)
                continue
            out.append(CrowsPair(rid, vals[0], vals[1], vals[2], vals[3]))
    return out, skipped


# ---------------------------------------------------------------------------------------------------- BBQ
BBQ_CATEGORIES = ("Age", "Disability_status", "Gender_identity", "Nationality", "Physical_appearance",
                  "Race_ethnicity", "Race_x_SES", "Race_x_gender", "Religion", "SES", "Sexual_orientation")


@dataclass(frozen=True)
class BBQItem:
    id: str                # "<category>:<example_id>"
    category: str
    question_index: str
    polarity: str          # neg / nonneg
    condition: str         # ambig / disambig
    context: str
    question: str
    answers: tuple         # 3 answer strings
    label: int
    unknown: int           # index of the "unknown" answer
    target: int            # the official bias target (fairq.text.bbq.bbq_target: choosing it is the biased answer,
                           # for non-negative questions too), -1 where the BBQ authors' rule gives none
    label_type: str = "label"  # "label" / "name" (question_index > 25), as BBQ_calculate_bias_score.R splits them


def read_bbq(root, categories=None) -> tuple[list[BBQItem], Skipped]:
    """The official per-category jsonl files of the BBQ folder ``root``; each item's bias target by the BBQ
    authors' rule (:mod:`fairq.text.bbq`: template rows from ``root/templates`` or fairq's shipped copy)."""
    root = Path(root)
    cats = list(categories) if categories else sorted(p.stem for p in root.glob("*.jsonl"))
    if not cats:
        require_file(root / "Age.jsonl", "bbq")
    groups = groups_index(known_groups(root)[0])
    skipped = Skipped()
    out = []
    for cat in cats:
        path = require_file(root / f"{cat}.jsonl", "bbq")
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
            if not line.strip():
                continue
            rid = f"{cat}:line{i + 1}"
            try:
                ex = json.loads(line)
                info = ex["answer_info"]
                unknown = [k for k in range(3) if str(info[f"ans{k}"][1]).lower() == "unknown"]
                answers = tuple(str(ex[f"ans{k}"]) for k in range(3))
                targets = set(item_targets(ex, groups))  # one per template row of the question; they must agree
                item = BBQItem(f"{ex['category']}:{ex['example_id']}", str(ex["category"]), str(ex["question_index"]),
                               str(ex["question_polarity"]), str(ex["context_condition"]), str(ex["context"]),
                               str(ex["question"]), answers, int(ex["label"]), unknown[0] if len(unknown) == 1 else -1,
                               targets.pop() if len(targets) == 1 else -1, label_type(ex["question_index"]))
            except (json.JSONDecodeError, KeyError, TypeError, ValueError, IndexError, re.error):
                skipped.add("malformed entry", rid)
                continue
            if item.unknown < 0 or item.label not in (0, 1, 2) or item.condition not in ("ambig", "disambig") \
                    or item.polarity not in ("neg", "nonneg"):
                skipped.add("no single 'unknown' answer, or a bad label / condition / polarity", rid)
                continue
            if any(not a.strip() for a in answers):
                skipped.add("empty answer", rid)
                continue
            out.append(item)
    return out, skipped
