"""What a loaded session takes besides the token embeddings, read from the session itself: the
inputs blackbox-sal fills (mask, type ids, positions, ids) with their dtypes, the attention
mask's rank, the dimensions a fixed-shape export pins, and the tokenizer's pad token.

Both loaders ask this module (:mod:`.loading` for a model folder, :mod:`.prepared` for a
prepared one), so they read a session's interface the same way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer

from blackbox_sal.baselines import baseline_token
from blackbox_sal.model import files
from blackbox_sal.surgery.names import EMBEDS, KNOWN_INPUTS, MASK
from blackbox_sal.vocabulary.errors import ModelError, UsageError

INT_TYPES = {"tensor(int64)": np.int64, "tensor(int32)": np.int32}
FLOAT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


def int_inputs(session: Any) -> tuple[dict[str, Any], int]:
    """name -> numpy dtype of every input the body takes besides the embeddings, and the
    attention mask's rank (4: an additive float mask [batch, 1, 1, seq]); ModelError for inputs
    blackbox-sal cannot fill."""
    found: dict[str, Any] = {}
    mask_rank = 2
    for inp in session.get_inputs():
        if inp.name == EMBEDS:
            if inp.type != "tensor(float)":
                raise ModelError(f"{EMBEDS!r} must be float32, the model declares {inp.type}")
            continue
        if inp.name not in KNOWN_INPUTS:
            raise ModelError(f"the model needs an input {inp.name!r} that blackbox-sal cannot fill "
                             f"(it fills {', '.join(KNOWN_INPUTS)})")
        if inp.name == MASK and inp.type in FLOAT_TYPES:
            mask_rank = len(inp.shape or ())
            if mask_rank not in (2, 4):
                raise ModelError(f"input {MASK!r} is a float mask of rank {mask_rank}; blackbox-sal fills [batch, seq] "
                                 f"masks and additive [batch, 1, 1, seq] ones")
            found[inp.name] = FLOAT_TYPES[inp.type]
            continue
        if inp.type not in INT_TYPES:
            raise ModelError(f"input {inp.name!r} has type {inp.type}; expected int64 or int32")
        found[inp.name] = INT_TYPES[inp.type]
    return found, mask_rank


def fixed_dims(session: Any) -> tuple[int | None, int | None]:
    """(batch, length) where the embeddings input fixes them: a fixed-shape export."""
    inp = next(i for i in session.get_inputs() if i.name == EMBEDS)
    shape = list(inp.shape or ())
    static = [d if isinstance(d, int) and d > 0 else None for d in shape[:2]] + [None, None]
    return static[0], static[1]


def pad_id(tokenizer: Tokenizer, folder: Path | None = None) -> int | None:
    """The pad token's id, from the tokenizer's own declarations before any guess by name:
    tokenizer.json's ``padding`` section (read it before ``no_padding()``), then the folder's
    ``special_tokens_map.json`` and ``tokenizer_config.json`` (``pad_token``), then a token
    named like a pad token ([PAD], <pad>, ...). None when there is none."""
    padding = tokenizer.padding
    if padding and isinstance(padding.get("pad_id"), int) and padding.get("pad_token") is not None \
            and tokenizer.token_to_id(str(padding["pad_token"])) == padding["pad_id"]:
        return int(padding["pad_id"])
    for side in ("special_tokens_map.json", "tokenizer_config.json"):
        declared = files.read_side_json(folder, side) if folder is not None else None
        pad = declared.get("pad_token") if isinstance(declared, dict) else None
        if isinstance(pad, dict):  # {"content": "[PAD]", "lstrip": false, ...}
            pad = pad.get("content")
        found = tokenizer.token_to_id(pad) if isinstance(pad, str) else None
        if found is not None:
            return int(found)
    try:
        return baseline_token(tokenizer, "pad")
    except UsageError:
        return None


#: quantized operators whose activation ranges span the whole run (rows change each other)
ROW_COUPLED = frozenset({"DynamicQuantizeLinear", "DynamicQuantizeLSTM", "DynamicQuantizeMatMul", "QAttention"})


def row_coupled(quantized: tuple[str, ...]) -> bool:
    """Whether a quantized model must run one row at a time to give each row its own output."""
    return bool(ROW_COUPLED.intersection(quantized))


def row_coupled_note(quantized: tuple[str, ...]) -> str:
    ops = ", ".join(sorted(ROW_COUPLED.intersection(quantized)))
    return (f"the model quantizes its activations with one range over the whole run ({ops}): rows run together "
            f"change each other's outputs, so it is run one row at a time")
