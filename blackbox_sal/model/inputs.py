"""What a loaded session takes besides the token embeddings, read from the session itself: the
inputs blackbox-sal fills (mask, type ids, positions, ids) with their dtypes, the attention
mask's rank, the dimensions a fixed-shape export pins, and the tokenizer's pad token.

Both loaders ask this module (:mod:`.loading` for a model folder, :mod:`.prepared` for a
prepared one), so they read a session's interface the same way.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from tokenizers import Tokenizer

from blackbox_sal.baselines import baseline_token
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


def pad_id(tokenizer: Tokenizer) -> int | None:
    """The tokenizer's pad token id, or None where it names none."""
    try:
        return baseline_token(tokenizer, "pad")
    except UsageError:
        return None
