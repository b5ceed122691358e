"""fairq-minilm-mlm: the PyPI MiniLM encoder + the shipped MLM training (fairq.text.minilm_mlm)."""
from __future__ import annotations

import random

import pytest
import torch

from fairq.text import minilm_mlm as mm

# Held-out WordNet texts (md5 rule in minilm_mlm.is_heldout: never trained on), drawn once at random.
HELDOUT = [
    "complaisance: a disposition or tendency to yield to the will of others",
    "Moselle: German white wine from the Moselle valley or a similar wine made elsewhere",
    "had traveled to the farthest frontier",
    "systematics: the science of systematic classification",
    "short: lacking foresight or scope",
    "refrigerator car: a freight car that is equipped with refrigeration system",
    "grateful: feeling or showing gratitude",
    "Whittier: United States poet best known for his nostalgic poems about New England (1807-1892)",
    "immaculately: in an immaculate manner",
    "base: the principal ingredient of a mixture",
    "finger food: food to be eaten with the fingers",
    "touchline: either of the sidelines in soccer or rugby",
    "a very cocky young man",
    "make a phone call",
    "the enclosed check is to cover shipping and handling",
    "the student was kept in for impudent behavior",
    "surmount: be on top of",
    "dental technician: someone who makes dental appliances (bridges and dentures)",
    "equilateral triangle: a three-sided regular polygon",
    "pacifism: the doctrine that all violence is unjustifiable",
    "mezzanine: intermediate floor just above the ground floor",
    "She voted for going to the Chinese restaurant",
    "his spirit lives on",
    "genuflect: bend the knees and bow in church or before a religious superior or image",
]


def test_heldout_sentences_are_held_out():
    assert all(mm.is_heldout(t) for t in HELDOUT)
    assert not mm.is_heldout("the dog barked all night")  # the rule keeps ~99 % for training


def test_mask_batch_is_bert_masking():
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 30000, (400, 40))
    att = torch.ones_like(ids)
    att[:, 30:] = 0  # padding
    special = torch.zeros_like(ids, dtype=torch.bool)
    special[:, 0] = special[:, 29] = True  # [CLS], [SEP]
    out, (rows, cols), targets = mm.mask_batch(ids, att, special, 30522, gen)
    assert bool(att[rows, cols].all()) and not bool(special[rows, cols].any())
    assert torch.equal(targets, ids[rows, cols])
    assert set(rows.tolist()) == set(range(400))  # at least one per row
    n = len(rows)
    rate = n / (400 * 28)
    assert 0.14 < rate < 0.17  # 15 % of 11,200 candidates (sd 0.3 %) plus the forced ones
    masked = (out[rows, cols] == mm.MASK_ID).float().mean().item()
    kept = (out[rows, cols] == targets).float().mean().item()
    assert 0.76 < masked < 0.84 and 0.075 < kept < 0.125  # 80 / 10 / 10 over ~1,700 draws (sd <= 1 %)
    untouched = torch.ones_like(ids, dtype=torch.bool)
    untouched[rows, cols] = False
    assert torch.equal(out[untouched], ids[untouched])


def test_length_batches_cover_every_sequence_once_within_budget():
    rng = random.Random(0)
    seqs = [[0] * rng.randint(3, 64) for _ in range(3000)]
    batches = mm.length_batches(seqs, 1024, random.Random(1))
    flat = sorted(i for b in batches for i in b)
    assert flat == list(range(3000))
    assert all(max(len(seqs[i]) for i in b) * len(b) <= 1024 for b in batches)


def test_wordnet_texts_parses_glosses_and_examples(tmp_path):
    line = ('02084071 05 n 03 dog 0 domestic_dog 0 Canis_familiaris 0 000 | a member of the genus Canis; '
            'occurs in many breeds; "the dog barked all night"\n')
    (tmp_path / "data.noun").write_text("  1 This software and database is being provided\n" + line)
    for pos in ("verb", "adj", "adv"):
        (tmp_path / f"data.{pos}").write_text("")
    assert mm.wordnet_texts(tmp_path) == ["the dog barked all night",
                                          "dog: a member of the genus Canis; occurs in many breeds"]


@pytest.fixture(scope="module")
def shipped():
    pytest.importorskip("all_minilm_l6_v2")
    from fairq.text.models import MINILM_MLM, load_masked_lm

    return load_masked_lm(MINILM_MLM)


def _top1(model, tok, texts) -> tuple[int, int]:
    """Each word piece of each text masked alone; how many the model ranks first."""
    correct = n = 0
    with torch.no_grad():
        for text in texts:
            ids = tok(text, truncation=True, max_length=64)["input_ids"]
            pos = list(range(1, len(ids) - 1))
            batch = torch.tensor([ids] * len(pos))
            batch[torch.arange(len(pos)), pos] = tok.mask_token_id
            logits = model(input_ids=batch).logits[torch.arange(len(pos)), pos]
            correct += int((logits.argmax(-1) == torch.tensor(ids)[pos]).sum())
            n += len(pos)
    return correct, n


def test_shipped_model_loads_offline_tied(shipped):
    from transformers import BertForMaskedLM

    model, tok = shipped
    assert isinstance(model, BertForMaskedLM) and not model.training
    assert model.cls.predictions.decoder.weight.data_ptr() == model.bert.embeddings.word_embeddings.weight.data_ptr()
    assert len(tok) == model.config.vocab_size == 30522


def test_shipped_model_predicts_heldout_english(shipped):
    from scipy.stats import binomtest

    model, tok = shipped
    correct, n = _top1(model, tok, HELDOUT)
    assert n > 250
    # chance is 1/30,522 and the same encoder with the head as initialised gets 0 / 254; the shipped model got
    # 84 / 254 (33 %) when it was exported. Lower 99 % bound of its top-1 above 20 %.
    assert binomtest(correct, n).proportion_ci(0.99).low > 0.20, (correct, n)
    fresh = mm.build_model().eval()  # the same encoder, head as initialised before training
    fresh_correct, _ = _top1(fresh, tok, HELDOUT)
    assert fresh_correct <= 0.02 * n


def test_shipped_provenance_matches_file():
    import json

    info = json.loads((mm.DATA_DIR / mm.PROVENANCE_NAME).read_text())
    assert info["file"] == mm.DELTA_NAME and (mm.DATA_DIR / mm.DELTA_NAME).is_file()
    assert info["train_tokens"] >= 1_000_000
    assert 0 < info["heldout"]["top1"] < 1
