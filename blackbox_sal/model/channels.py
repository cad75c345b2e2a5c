"""A second id channel's ids, read from config.json's ``"channels"``: for each channel, its id
for every token of the vocabulary (see :class:`blackbox_sal.model.model_config.ChannelConfig`).

The map is given in config.json or in a JSON file of the model folder (read with the folder's
checks: no path out of it, no link, a size cap), keyed by tokens as the tokenizer spells them.
A token the map leaves out takes the ``default`` id; with no default, every token must be in
the map (a token with no id would be a guess).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer

from blackbox_sal.model import files
from blackbox_sal.model.model_config import CHANNELS_FORM, ChannelConfig
from blackbox_sal.vocabulary.errors import ModelError


def channel_maps(channels: tuple[ChannelConfig, ...], tokenizer: Tokenizer,
                 folder: Path) -> dict[str, tuple[str, np.ndarray]]:
    """name -> (its input, its id of each token int64 [vocab]), for every channel config.json
    names. ModelError for a map file that is not there or not a map, or a token with no id."""
    vocab = tokenizer.get_vocab(with_added_tokens=True)
    size = max(vocab.values(), default=-1) + 1
    found = {}
    for channel in channels:
        mapping = channel.map if channel.map is not None else _read(channel, folder)
        ids = np.full(size, -1, np.int64)
        for token, index in vocab.items():
            value = mapping.get(token, channel.default)
            if value is not None:
                ids[index] = value
        missing = sorted(int(i) for i in np.flatnonzero(ids < 0))
        if missing:
            tokens = {index: token for token, index in vocab.items()}
            shown = ", ".join(repr(tokens.get(i, f"#{i}")) for i in missing[:5])
            raise ModelError(f"config.json channels: {channel.name!r} gives no id for {len(missing)} of the "
                             f"tokenizer's {size} tokens ({shown}{', ...' if len(missing) > 5 else ''}): add them "
                             f"to the map, or give a \"default\" id")
        found[channel.name] = (channel.input, ids)
    return found


def _read(channel: ChannelConfig, folder: Path) -> dict[str, Any]:
    assert channel.file is not None
    raw = files.read_side_json(folder, channel.file)
    if raw is None:
        raise ModelError(f"config.json channels: {channel.name!r} names the file {channel.file!r}, which is not in "
                         f"the model folder")
    if not isinstance(raw, dict) or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0
                                            for v in raw.values()):
        raise ModelError(f"config.json channels: {channel.file!r} must hold a JSON object of token -> id (an integer "
                         f">= 0), as a map in config.json would (the form: {CHANNELS_FORM})")
    return raw
