"""Baseline (reference) embeddings for integrated gradients and occlusion.

A baseline replaces every ordinary token's embedding; special tokens ([CLS], [SEP], BOS...)
keep their own, as in Captum's and Thermostat's text examples, so the baseline is still a
well-formed input. Names (``BASELINES``): ``pad`` (the default), ``unk``, ``mask`` use that
token's embedding; ``zero`` the zero vector (LIT, AllenNLP). Any other name is read as a
token of the vocabulary (e.g. ``--baseline the``).
"""

from __future__ import annotations

import numpy as np
from tokenizers import Tokenizer

from blackbox_sal.text.tokenization import Tokens, encode
from blackbox_sal.vocabulary.errors import InputError, UsageError

#: baseline name -> token strings tried in order ("zero" uses no token)
BASELINES: dict[str, tuple[str, ...]] = {
    "pad": ("[PAD]", "<pad>", "<|pad|>", "<|endoftext|>"),
    "unk": ("[UNK]", "<unk>", "<|unk|>"),
    "mask": ("[MASK]", "<mask>", "<|mask|>"),
    "zero": (),
}


def baseline_token(tokenizer: Tokenizer, name: str) -> int | None:
    """The token id a baseline uses; None for ``zero``. UsageError when the tokenizer lacks it."""
    key = name.lower()
    if key == "zero":
        return None
    if key in BASELINES:
        padding = tokenizer.padding
        candidates = ((padding["pad_token"],) if key == "pad" and padding else ()) + BASELINES[key]
        for cand in candidates:
            found = tokenizer.token_to_id(cand)
            if found is not None:
                return int(found)
        raise UsageError(f"the tokenizer has no {key.upper()} token "
                         f"(looked for {', '.join(BASELINES[key])}); choose another --baseline "
                         f"({', '.join(sorted(BASELINES))} or a token)")
    found = tokenizer.token_to_id(name)
    if found is not None:
        return int(found)
    try:
        ids = encode(tokenizer, name, add_special_tokens=False).ids
    except InputError:  # the tokenizer cannot read it (no unknown token, a panic): not a token
        ids = []
    unknown = {tokenizer.token_to_id(t) for t in BASELINES["unk"]} - {None}
    if len(ids) == 1 and ids[0] not in unknown:
        return int(ids[0])
    raise UsageError(f"baseline {name!r} is neither {', '.join(sorted(BASELINES))} nor a single "
                     f"token of the vocabulary")


def make_baseline(name: str, tokenizer: Tokenizer, table: np.ndarray, tokens: Tokens,
                  embeds: np.ndarray) -> np.ndarray:
    """Baseline embeddings float32 [S, D] for ``tokens`` whose embeddings are ``embeds``."""
    token = baseline_token(tokenizer, name)
    row = np.zeros(table.shape[1], np.float32) if token is None else table[token]
    base = np.broadcast_to(row, embeds.shape).copy()
    base[tokens.special] = embeds[tokens.special]
    return base
