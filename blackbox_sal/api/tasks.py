"""Tasks built on single explanations: a generated continuation step by step, multiple
choice, sentence similarity. Each returns a frozen result (:mod:`blackbox_sal.vocabulary.result`); each
is a piece of engine work, so its runs are packed like any explanation's."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np
from tokenizers import Tokenizer, decoders

from blackbox_sal.api.explaining import ClassQuestion, SimilarityQuestion, explanation, runner
from blackbox_sal.engine.drive import drive_one
from blackbox_sal.model.text_model import TextModel
from blackbox_sal.text.tokenization import Tokens, tokenize, tokenize_pair
from blackbox_sal.vocabulary.config import ExplainConfig
from blackbox_sal.vocabulary.errors import UsageError
from blackbox_sal.vocabulary.result import Choices, Explanation, Generation, Label, Similarity
from blackbox_sal.vocabulary.runs import ArrayPoints, Forward, Seq, Work, ask, ask_all
from blackbox_sal.vocabulary.scores import SCORES, cosine, resolve_target


def _forward(model: TextModel, tokens: Tokens) -> Forward:
    """The request for the model's outputs on one tokenized text (padded under the mask to a
    fixed-length export's length, as an explanation's runs are; a fixed batch is the engine's)."""
    ids, type_ids, mask = model.pad(tokens.ids, tokens.type_ids)
    return Forward(Seq(ids, type_ids, mask), ArrayPoints(model.embed(ids)[None]))


def explain_generation(model: TextModel, prompt: str, max_new_tokens: int,
                       config: ExplainConfig | None = None) -> Generation:
    """Generate up to ``max_new_tokens`` tokens greedily after ``prompt`` (stopping at a special
    token such as end-of-text) and explain each one: step k attributes token k to the prompt
    and the k tokens before it. Causal LMs only (UsageError otherwise); ``config.target`` is
    ignored (each step's target is the token generated)."""
    cfg = (config or ExplainConfig()).validated()
    return drive_one(generation(model, prompt, max_new_tokens, cfg), runner(model, cfg))


#: the most tokens one generation may explain (each costs a whole explanation)
MAX_NEW_TOKENS = 1024


def generation(model: TextModel, prompt: str, max_new_tokens: int, cfg: ExplainConfig) -> Work[Generation]:
    if model.task != "next-token":
        raise UsageError("generation needs a causal LM (an output of one row of logits per position)")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or \
            not 1 <= max_new_tokens <= MAX_NEW_TOKENS:
        raise UsageError(f"max_new_tokens must be an integer from 1 to {MAX_NEW_TOKENS:,}, got {max_new_tokens!r}")
    tokens = tokenize(model.tokenizer, prompt, model.max_length, cfg.max_chars)
    specials = {i for i, t in model.tokenizer.get_added_tokens_decoder().items() if t.special}
    text = _Detokenizer(model.tokenizer, [int(i) for i in tokens.ids])
    generated: list[Label] = []
    steps: list[Explanation] = []
    for _ in range(max_new_tokens):
        if model.max_length is not None and len(tokens) >= model.max_length:
            break
        logits = (yield from ask(_forward(model, tokens)))[0]
        chosen = int(np.argmax(logits))
        if chosen in specials:
            break
        generated.append(Label(chosen, model.label(chosen), float(logits[chosen])))
        steps.append((yield from explanation(model, tokens, cfg, ClassQuestion(chosen))))
        tokens = _append(tokens, chosen, text.add(chosen))
    if text.pending():  # stopped inside a character: its bytes as they are
        tokens = _append(tokens, None, text.pending())
    return Generation(prompt=prompt, text=tokens.text, generated=tuple(generated), steps=tuple(steps))


class _Detokenizer:
    """The text each generated token adds, decoded in context, with tokenizers' own
    ``DecodeStream``: a byte-level tokenizer spells one character over several tokens, and a
    token alone may decode to a replacement character or lose its leading space. A token whose
    character is not complete yet adds "" and the token that completes it adds the whole
    character, as streaming decoders do; :meth:`pending` is what is left when it stops there."""

    def __init__(self, tokenizer: Tokenizer, prompt_ids: list[int]) -> None:
        self.tokenizer = tokenizer
        self.stream = decoders.DecodeStream(ids=prompt_ids, skip_special_tokens=True)
        self.waiting: list[int] = []  # generated tokens whose text has not come out yet

    def add(self, token: int) -> str:
        piece = self.stream.step(self.tokenizer, token)
        if piece is None:
            self.waiting.append(token)
            return ""
        self.waiting = []
        return str(piece)

    def pending(self) -> str:
        """What the tokens after the last emitted one decode to ("" when nothing waits)."""
        return self.tokenizer.decode(self.waiting, skip_special_tokens=True) if self.waiting else ""


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
    model scores it by the output class ``config.target`` (needed when it has several).

    Choices are ranked by ``config.score``: for a classifier, the target class's logit,
    probability or log-probability of each pair; for a multiple-choice export, its logit, or
    the softmax across the choices (probability, log-probability)."""
    cfg = (config or ExplainConfig()).validated()
    return drive_one(multiple_choice(model, text, choices, cfg), runner(model, cfg))


def multiple_choice(model: TextModel, text: str, choices: Sequence[str], cfg: ExplainConfig) -> Work[Choices]:
    if len(choices) < 2:
        raise UsageError("give at least two answer choices")
    if model.task == "next-token":
        raise UsageError("multiple choice scores (context, choice) pairs with a classifier or a multiple-choice "
                         "model, not a causal LM")
    pairs = [tokenize_pair(model.tokenizer, text, c, model.max_length, cfg.max_chars) for c in choices]
    outputs = np.concatenate((yield from ask_all([_forward(model, p) for p in pairs])))
    if cfg.target is None and outputs.shape[1] > 1:
        raise UsageError(f"the model has {outputs.shape[1]} output classes: say with --target which one scores "
                         f"a choice (labels: {', '.join(model.labels or ()) or 'none; use an index'})")
    target = resolve_target(cfg.target, model.labels, outputs.shape[1], 0)
    if outputs.shape[1] == 1:  # one score per pair: a softmax runs across the choices
        scores = SCORES[cfg.score](outputs[:, 0][None])[0]
    else:
        scores = SCORES[cfg.score](outputs)[:, target]
    best = int(np.argmax(scores))
    explained = yield from explanation(model, pairs[best], replace(cfg, score="logit") if outputs.shape[1] == 1
                                       else cfg, ClassQuestion(target))
    return Choices(text=text, choices=tuple(Label(k, c, float(v)) for k, (c, v) in enumerate(zip(choices, scores,
                                                                                                   strict=True))),
                   predicted=best, explanation=explained, score=cfg.score)


def explain_similarity(model: TextModel, text: str, reference: str,
                       config: ExplainConfig | None = None) -> Similarity:
    """Attribute the cosine similarity of two texts' embeddings (a sentence encoder's output,
    [batch, dim]) to the tokens of both: each text is explained with the other's embedding
    held fixed (the texts are encoded separately, so these are the two halves of the
    gradient). ``config.target`` and ``config.score`` are not used."""
    cfg = (config or ExplainConfig()).validated()
    return drive_one(similarity(model, text, reference, cfg), runner(model, cfg))


def similarity(model: TextModel, text: str, reference: str, cfg: ExplainConfig) -> Work[Similarity]:
    if model.task not in ("classification", "embedding"):
        raise UsageError("similarity needs a model whose output is one embedding per text ([batch, dim])")
    pair = [tokenize(model.tokenizer, t, model.max_length, cfg.max_chars) for t in (text, reference)]
    vectors = [o[0] for o in (yield from ask_all([_forward(model, t) for t in pair]))]
    if vectors[0].shape[0] < 2:
        raise UsageError(f"output {model.output!r} has one value per text; similarity needs an embedding")
    first = yield from explanation(model, pair[0], cfg, SimilarityQuestion(vectors[1]))
    second = yield from explanation(model, pair[1], cfg, SimilarityQuestion(vectors[0]))
    return Similarity(cosine=float(cosine(vectors[0][None], vectors[1])[0]), texts=(first, second))
