"""Tasks built on single explanations: a generated continuation step by step, multiple
choice, sentence similarity. Each returns a frozen result (:mod:`blackbox_sal.result`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np
from tokenizers import Tokenizer

from blackbox_sal.config import ExplainConfig
from blackbox_sal.errors import UsageError
from blackbox_sal.explain import explain_tokens
from blackbox_sal.model.objective import cosine, resolve_target
from blackbox_sal.model.text_model import TextModel
from blackbox_sal.result import Choices, Explanation, Generation, Label, Similarity
from blackbox_sal.text.tokenization import Tokens, tokenize, tokenize_pair


def explain_generation(model: TextModel, prompt: str, max_new_tokens: int,
                       config: ExplainConfig | None = None) -> Generation:
    """Generate up to ``max_new_tokens`` tokens greedily after ``prompt`` (stopping at a special
    token such as end-of-text) and explain each one: step k attributes token k to the prompt
    and the k tokens before it. Causal LMs only (UsageError otherwise); ``config.target`` is
    ignored (each step's target is the token generated)."""
    cfg = (config or ExplainConfig()).validated()
    if model.task != "next-token":
        raise UsageError("generation needs a causal LM (an output of one row of logits per position)")
    if max_new_tokens < 1:
        raise UsageError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    tokens = tokenize(model.tokenizer, prompt, model.max_length, cfg.max_chars)
    specials = {i for i, t in model.tokenizer.get_added_tokens_decoder().items() if t.special}
    text = _Detokenizer(model.tokenizer, [int(i) for i in tokens.ids])
    generated: list[Label] = []
    steps: list[Explanation] = []
    for _ in range(max_new_tokens):
        if model.max_length is not None and len(tokens) >= model.max_length:
            break
        x = model.embed(tokens.ids)
        logits = model.run(x[None], tokens.ids, tokens.type_ids, 1)[0]
        chosen = int(np.argmax(logits))
        if chosen in specials:
            break
        generated.append(Label(chosen, model.label(chosen), float(logits[chosen])))
        steps.append(explain_tokens(model, tokens, cfg, chosen))
        tokens = _append(tokens, chosen, text.add(chosen))
    if text.pending():  # stopped inside a character: its bytes as they are
        tokens = _append(tokens, None, text.pending())
    return Generation(prompt=prompt, text=tokens.text, generated=tuple(generated), steps=tuple(steps))


class _Detokenizer:
    """The text each generated token adds, decoded in context: a byte-level tokenizer spells
    one character over several tokens, and a token alone may decode to a replacement
    character or lose its leading space. A token whose character is not complete yet adds
    "" and the token that completes it adds the whole character (as streaming decoders do)."""

    CONTEXT = 4  # prompt tokens decoded with the first generated ones (spaces, merges)

    def __init__(self, tokenizer: Tokenizer, prompt_ids: list[int]) -> None:
        self.tokenizer, self.ids = tokenizer, list(prompt_ids)
        self.start = max(len(self.ids) - self.CONTEXT, 0)  # decoded from here ...
        self.done = len(self.ids)  # ... up to here has been emitted

    def _decode(self, end: int) -> str:
        return self.tokenizer.decode(self.ids[self.start:end], skip_special_tokens=True)

    def add(self, token: int) -> str:
        self.ids.append(token)
        before, after = self._decode(self.done), self._decode(len(self.ids))
        if len(after) <= len(before) or after.endswith("\ufffd") or not after.startswith(before):
            return ""
        self.start, self.done = self.done, len(self.ids)
        return after[len(before):]

    def pending(self) -> str:
        """What the tokens after the last emitted one decode to ("" when nothing waits)."""
        if self.done == len(self.ids):
            return ""
        before, after = self._decode(self.done), self._decode(len(self.ids))
        return after[len(before):] if after.startswith(before) else after


def _append(tokens: Tokens, token: int | None, piece: str) -> Tokens:
    """``tokens`` with one generated token after the last, its text appended to the text;
    token None appends text to the last token instead."""
    start = len(tokens.text)
    if token is None:
        first = tokens.offsets[-1][0]
        return replace(tokens, text=tokens.text + piece, strings=(*tokens.strings[:-1], tokens.strings[-1] + piece),
                       offsets=(*tokens.offsets[:-1], (first, start + len(piece))))
    words = [w for w in tokens.word_ids if w is not None]
    return Tokens(
        text=tokens.text + piece, ids=np.append(tokens.ids, token), type_ids=np.append(tokens.type_ids, 0),
        strings=(*tokens.strings, piece), offsets=(*tokens.offsets, (start, start + len(piece))),
        special=np.append(tokens.special, False), word_ids=(*tokens.word_ids, (max(words) + 1) if words else 0))


def explain_choices(model: TextModel, text: str, choices: Sequence[str],
                    config: ExplainConfig | None = None) -> Choices:
    """Score each answer choice as the pair (text, choice) and explain the best one: which
    tokens of the context, question and answer drove its score. A multiple-choice export
    scores each pair by itself (its [batch, choices] output, one choice at a time); any other
    model scores it by the output class ``config.target`` (needed when it has several)."""
    cfg = (config or ExplainConfig()).validated()
    if len(choices) < 2:
        raise UsageError("give at least two answer choices")
    if model.task == "next-token":
        raise UsageError("multiple choice scores (context, choice) pairs with a classifier or a multiple-choice "
                         "model, not a causal LM")
    pairs = [tokenize_pair(model.tokenizer, text, c, model.max_length, cfg.max_chars) for c in choices]
    outputs = np.stack([model.run(model.embed(p.ids)[None], p.ids, p.type_ids, 1)[0] for p in pairs])
    if cfg.target is None and outputs.shape[1] > 1:
        raise UsageError(f"the model has {outputs.shape[1]} output classes: say with --target which one scores "
                         f"a choice (labels: {', '.join(model.labels or ()) or 'none; use an index'})")
    target = resolve_target(cfg.target, model.labels, outputs.shape[1], 0)
    scores = outputs[:, target]
    best = int(np.argmax(scores))
    return Choices(text=text, choices=tuple(Label(k, c, float(v)) for k, (c, v) in enumerate(zip(choices, scores,
                                                                                                   strict=True))),
                   predicted=best, explanation=explain_tokens(model, pairs[best], cfg, target))


def explain_similarity(model: TextModel, text: str, reference: str,
                       config: ExplainConfig | None = None) -> Similarity:
    """Attribute the cosine similarity of two texts' embeddings (a sentence encoder's output,
    [batch, dim]) to the tokens of both: each text is explained with the other's embedding
    held fixed (the texts are encoded separately, so these are the two halves of the
    gradient). ``config.target`` and ``config.score`` are not used."""
    cfg = (config or ExplainConfig()).validated()
    if model.task != "classification":
        raise UsageError("similarity needs a model whose output is one embedding per text ([batch, dim])")
    pair = [tokenize(model.tokenizer, t, model.max_length, cfg.max_chars) for t in (text, reference)]
    vectors = [model.run(model.embed(t.ids)[None], t.ids, t.type_ids, 1)[0] for t in pair]
    if vectors[0].shape[0] < 2:
        raise UsageError(f"output {model.output!r} has one value per text; similarity needs an embedding")
    sides = (explain_tokens(model, pair[0], cfg, reference=vectors[1]),
             explain_tokens(model, pair[1], cfg, reference=vectors[0]))
    return Similarity(cosine=float(cosine(vectors[0][None], vectors[1])[0]), texts=sides)
