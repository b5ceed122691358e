"""Training on text: the text datamodule's MLM loader (seeded, lazily read, no planted corpus for a user's model
unless asked), the masked-LM Lightning module, and the methods that train (distill, qat, pruning with fine-tuning)
on a BERT masked LM through the same registry call as on vision; fairness_finetune is refused by name."""
import pytest
import torch

from datamodules.text import TextDataModule
from fairq.batches import split_batch
from fairq.compression import MethodInputs, compress, make_config
from fairq.compression.distill import MaskedLMDistillModule, mean_kl
from fairq.errors import UserError
from fairq.lit import MaskedLMModule, labelled_positions, masked_lm_logits, objective_of, quiet_trainer
from fairq.methods import load_methods
from fairq.text.embedded import TinyBertSpec

load_methods()
VOCAB, MASK = 64, 4


def _tiny_mlm(layers: int = 2, seed: int = 0):
    import transformers

    torch.manual_seed(seed)
    cfg = transformers.BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=layers, num_attention_heads=2,
                                  intermediate_size=64, max_position_embeddings=32)
    return transformers.BertForMaskedLM(cfg).eval()


def _mlm_batches(n_batches: int = 3, seed: int = 1):
    """Hand-made MLM batches: 3 masked positions per row (id MASK), labels = the original ids there, -100 else."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n_batches):
        ids = torch.randint(5, VOCAB, (8, 12), generator=g)
        labels = torch.full_like(ids, -100)
        pos = torch.stack([torch.randperm(12, generator=g)[:3] for _ in range(8)])
        rows = torch.arange(8)[:, None]
        labels[rows, pos] = ids[rows, pos]
        ids[rows, pos] = MASK
        out.append({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels})
    return out


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("FAIRQ_CACHE", str(tmp_path_factory.mktemp("cache")))
    from fairq.text.models import bert_uncased_tokenizer

    yield bert_uncased_tokenizer()
    mp.undo()


def _dm(tok, *, embedded: bool = True, **kw):
    dm = TextDataModule(root=None, stereoset=False, crows=False, bbq=False, probes=True,
                        **{"train_sentences": 64, "train_batch_size": 16, **kw})
    dm.setup()
    dm.set_tokenizer(tok, model_name="fairq-tiny-bert" if embedded else "some-org/some-bert",
                     corpus_spec=TinyBertSpec() if embedded else None)
    return dm


def test_training_loader_gives_seeded_mlm_batches_of_the_generated_corpus(tok):
    batches = list(_dm(tok).train_dataloader())
    assert len(batches) == 4
    for b in batches:
        assert set(b) >= {"input_ids", "attention_mask", "labels"} and b["labels"].shape == b["input_ids"].shape
        masked = b["labels"] != -100
        assert masked.any() and not masked[b["attention_mask"] == 0].any()  # padding is never a target
        assert (b["input_ids"][masked] == tok.mask_token_id).float().mean() > 0.5   # BERT's 80/10/10 rule
    words = {w for s in _dm(tok).training_sentences() for w in s.split()}
    assert {"man", "woman", "doctor", "farmer"} & words                 # the embedded default's corpus
    again = list(_dm(tok).train_dataloader())
    assert all(torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["labels"], b["labels"])
               for a, b in zip(batches, again))                         # same seed, same sentences and masks
    other = list(_dm(tok, seed=1).train_dataloader())
    assert not torch.equal(batches[0]["input_ids"], other[0]["input_ids"])


def test_a_user_model_is_not_trained_on_the_planted_corpus_unless_asked(tok, tmp_path):
    loader = _dm(tok, embedded=False).train_dataloader()  # building the loader is fine (magnitude_prune needs it)
    with pytest.raises(UserError, match="train_corpus"):
        next(iter(loader))
    assert len(list(_dm(tok, embedded=False, train_corpus="embedded").train_dataloader())) == 4
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the cat sat on the mat .\n\n" + "\n".join(f"line number {i} is here ." for i in range(40)))
    sents = _dm(tok, embedded=False, train_corpus=str(corpus)).training_sentences()
    assert len(sents) == 41 and "" not in sents and "the cat sat on the mat ." in sents
    with pytest.raises(UserError, match="not a file"):
        _dm(tok, embedded=False, train_corpus=str(tmp_path / "missing.txt")).training_sentences()
    for bad in ({"train_mask_prob": 1.5}, {"train_sentences": 0}, {"train_batch_size": -1}):
        with pytest.raises(UserError, match="train_"):
            TextDataModule(root=None, **bad)


def test_masked_positions_are_gathered_before_the_vocabulary_projection():
    model, b = _tiny_mlm(), split_batch(_mlm_batches(1)[0])
    logits, labels = masked_lm_logits(model, b)
    full, want = labelled_positions(model(**b.kwargs).logits, b.target)
    assert logits.shape == (24, VOCAB) and torch.equal(labels, want)
    assert torch.allclose(logits, full, atol=1e-5)


def test_mlm_module_loss_falls_on_mlm_batches():
    from fairq.lit import fit

    model, data = _tiny_mlm(), _mlm_batches(2)
    assert objective_of(None, data) == "masked_lm"

    def loss():
        with torch.no_grad():
            return float(torch.nn.functional.cross_entropy(*masked_lm_logits(model, split_batch(data[0]))))

    before = loss()
    info = fit(model, lambda **o: quiet_trainer("cpu", **o), train_loader=data, lr=1e-2, max_epochs=5)
    assert info["steps"] == 10 and loss() < before and "train/mlm_loss" in info
    with pytest.raises(ValueError, match="no group labels"):
        MaskedLMModule(model, penalty=lambda *a: 0, penalty_weight=1.0)


def test_mlm_distillation_moves_the_student_toward_the_teacher():
    teacher = _tiny_mlm()
    with torch.no_grad():  # confident, input-dependent teacher outputs (random init is near-uniform)
        for p in teacher.parameters():
            if p.dim() > 1:
                p.mul_(3.0)
    train, val = _mlm_batches(3, seed=1), _mlm_batches(2, seed=2)
    cfg = make_config("distill", epochs=6, lr=3e-3, alpha=0.9, temperature=2.0, init="random")
    res = compress(teacher, cfg, MethodInputs(train_loader=train, validation=val))
    student, rec = res.model, res.record
    assert len(student.bert.encoder.layer) == 1 and student.config.num_hidden_layers == 1
    assert rec["distill_steps"] == 18 and rec["distill_loss_last"] < rec["distill_loss_first"]
    assert rec["kl_to_teacher_after"] < rec["kl_to_teacher_before"]
    assert rec["kl_to_teacher_after"] == pytest.approx(mean_kl(student, teacher, val))  # masked positions' KL
    assert rec["params"] < rec["teacher_params"]
    assert student.get_output_embeddings().weight is student.bert.embeddings.word_embeddings.weight  # still tied
    with pytest.raises(ValueError, match="half_depth"):
        compress(teacher, make_config("distill", student="tiny_cnn"), MethodInputs(train_loader=train,
                                                                                    validation=val))


def test_methods_that_train_run_on_a_masked_lm_through_a_run_datamodule(tok):
    """The run's path: a TextDataModule and a trainer factory (Lightning fit of the MLM module)."""
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(0)
    model = BertForMaskedLM(BertConfig(vocab_size=len(tok), hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                       intermediate_size=32, max_position_embeddings=64)).eval()
    dm = _dm(tok)
    calib = dm.calibration_dataloader(8, batch_size=8)
    inputs = MethodInputs(calibration=calib, validation=dm.val_dataloader(), train_loader=dm.train_dataloader(),
                          datamodule=dm, make_trainer=lambda **o: quiet_trainer("cpu", **o))
    pruned = compress(model, make_config("magnitude_prune", sparsity=0.5, finetune_epochs=1, finetune_steps=3), inputs)
    assert pruned.record["finetune_steps"] == 3 and pruned.record["sparsity"] == pytest.approx(0.5, abs=1e-3)
    qat = compress(model, make_config("qat", 8, backend="simulated", max_steps=2), inputs)
    assert (qat.weight_bits, qat.backend) == (8, "simulated")
    student = compress(model, make_config("distill", max_steps=2), inputs)
    assert student.record["distill_steps"] == 2
    with pytest.raises(UserError, match="fairness_finetune"):
        compress(model, make_config("fairness_finetune", 8, max_steps=1), inputs)
