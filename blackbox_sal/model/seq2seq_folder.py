"""An encoder/decoder folder's side files, read without onnx (the command line asks before it
loads anything): config.json's ids and the tokenizer, and whether the folder holds two files
with a stepping decoder (:mod:`blackbox_sal.model.pair_files`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tokenizers import Tokenizer, processors

from blackbox_sal.model import files
from blackbox_sal.model.tokenizer_files import read_folder_tokenizer
from blackbox_sal.vocabulary.errors import ModelError

#: the config.json key of the two-file form
KEY = "encoder_decoder"


def is_file_pair(folder: Path) -> bool:
    """A folder with config.json's ``encoder_decoder``, or with encoder.onnx and decoder.onnx
    (which load refuses, naming the form, until config.json says how they connect)."""
    if not folder.is_dir():
        return False
    if (folder / "encoder.onnx").is_file() and (folder / "decoder.onnx").is_file():
        return True
    if not (folder / "config.json").is_file():
        return False
    config = files.read_side_json(folder, "config.json")
    return isinstance(config, dict) and isinstance(config.get(KEY), dict)


def side_files(folder: Path) -> tuple[Tokenizer, dict[str, Any], tuple[int, int, Any]]:
    """The tokenizer, config.json, and config's (decoder start, end of sequence, pad) ids:
    read with the folder's checks (links only inside it, sizes capped). The tokenizer is
    tokenizer.json, else the folder's vocabulary in another form
    (:func:`~blackbox_sal.model.tokenizer_files.read_folder_tokenizer`: a character map, say),
    which then ends each source with the end-of-sequence token, as seq2seq tokenizers do."""
    config = files.read_side_json(folder, "config.json")
    config = config if isinstance(config, dict) else {}
    start, eos, pad = (config.get(k) for k in ("decoder_start_token_id", "eos_token_id", "pad_token_id"))
    if not isinstance(start, int) or not isinstance(eos, int):
        raise ModelError("config.json must give decoder_start_token_id and eos_token_id (integers)")
    if files.read_side_file(folder, "tokenizer.json") is not None:
        return files.read_tokenizer(folder / "tokenizer.json"), config, (start, eos, pad)
    found = read_folder_tokenizer(folder, config)
    if found is None:
        raise ModelError(f"no tokenizer.json (nor another vocabulary file) in {str(folder)!r}")
    tokenizer = found.tokenizer
    end = tokenizer.id_to_token(eos)
    if end is None:
        raise ModelError(f"config.json's eos_token_id {eos} is not in the vocabulary ({found.form})")
    tokenizer.post_processor = processors.TemplateProcessing(single=f"$A {end}", special_tokens=[(end, eos)])
    return tokenizer, config, (start, eos, pad)
