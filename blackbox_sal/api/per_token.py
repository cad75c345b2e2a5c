"""Per-token models (taggers, segmenters): every target of a text explained together.

A text's targets (:mod:`blackbox_sal.targets.per_token`: its predicted entities, or the
position ``--at`` names) are explained by the same method, each as a classification
explanation of its own scalar (the sum of its tokens' label scores), and their work is driven
side by side (:func:`blackbox_sal.vocabulary.runs.together`): at each step the k targets'
rows go out together, so one forward run holds the k prediction rows and one gradient run the
k seeded rows (a vector-Jacobian product with k cotangent rows), not k runs of one row. The
result is a :class:`~blackbox_sal.vocabulary.result.TokenTargets`: the matrix (targets x input
tokens) with each target's completeness gap.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from blackbox_sal.api.explaining import PerTokenQuestion, explanation, runner
from blackbox_sal.engine.drive import drive_many, drive_one
from blackbox_sal.model.text_model import TextModel
from blackbox_sal.targets.per_token import Target, find_targets
from blackbox_sal.text.tokenization import Tokens, tokenize
from blackbox_sal.vocabulary.config import ExplainConfig
from blackbox_sal.vocabulary.errors import SalError, TooLongError, UsageError
from blackbox_sal.vocabulary.result import Explanation, TokenTarget, TokenTargets
from blackbox_sal.vocabulary.runs import ArrayPoints, Forward, Seq, Work, ask, together


def explain_tokens(model: TextModel, text: str, config: ExplainConfig | None = None) -> TokenTargets:
    """Explain every target of a per-token model's prediction on ``text`` (its entities, or
    ``config.at``), packed into shared runs. UsageError (exit 2) for a model that is not
    per-token or a target that is not in the text."""
    cfg = (config or ExplainConfig()).validated()
    return drive_one(token_targets(model, text, cfg), runner(model, cfg))


def explain_tokens_many(model: TextModel, texts: Iterable[str], config: ExplainConfig | None = None,
                        window: int = 16) -> Iterator[TokenTargets | SalError]:
    """:func:`explain_tokens` for many texts, in order, up to ``window`` in flight together
    (each item the result, or the SalError its text ended with)."""
    cfg = (config or ExplainConfig()).validated()
    return drive_many((token_targets(model, t, cfg) for t in texts), runner(model, cfg), window)


@dataclass(frozen=True)
class TextTarget:
    """One target of one text, found on the model's prediction: what the evaluation commands
    (sanity, global, eval) explain again and again, by its positions and labels, whatever a
    changed model (a randomized one) or a changed input (tokens removed) would predict."""

    text: str
    tokens: Tokens
    target: Target


def text_targets(model: TextModel, text: str, cfg: ExplainConfig) -> Work[tuple[Tokens, np.ndarray, list[Target]]]:
    """The work of finding one text's targets (``cfg.at``, or every predicted entity): its
    tokens, the model's scores [S, L] and the targets, from one forward row."""
    if model.task != "per-token":
        raise UsageError(f"per-token targets need a per-token model ([batch, seq, labels] output); "
                         f"{model.name} is a {model.task} model")
    tokens = tokenize(model.tokenizer, text, None, cfg.max_chars)
    if model.max_length is not None and len(tokens) > model.max_length:
        raise TooLongError(f"the text has {len(tokens)} tokens; the model takes at most {model.max_length}")
    ids, type_ids, mask = model.pad(tokens.ids, tokens.type_ids)
    outputs = yield from ask(Forward(Seq(ids, type_ids, mask), ArrayPoints(model.embed(ids)[None]), "prediction"))
    scores = np.asarray(outputs, np.float64)[0].reshape(len(ids), -1)
    return tokens, scores, find_targets(scores, tokens, model.labels, cfg.at, cfg.target, cfg.contrast)


def target_explanation(model: TextModel, found: TextTarget, cfg: ExplainConfig) -> Work[Explanation]:
    """The work of explaining one found target (its positions and labels fixed) with ``cfg``'s
    method; ``cfg``'s at, target and contrast are not read again."""
    return explanation(model, found.tokens, cfg, PerTokenQuestion(found.tokens, found.target))


def targets_of_texts(model: TextModel, texts: list[str], cfg: ExplainConfig,
                     window: int = 64) -> tuple[list[TextTarget], list[SalError]]:
    """Every target of ``texts`` (``cfg.at``, or each predicted entity), in text order, their
    prediction rows packed; and the errors of the texts whose targets could not be found."""
    found: list[TextTarget] = []
    lost: list[SalError] = []
    done = drive_many((text_targets(model, t, cfg) for t in texts), runner(model, cfg), window)
    for text, result in zip(texts, done, strict=True):
        if isinstance(result, SalError):
            lost.append(result)
        else:
            found += [TextTarget(text, result[0], t) for t in result[2]]
    return found, lost


def token_targets(model: TextModel, text: str, cfg: ExplainConfig) -> Work[TokenTargets]:
    """The work of explaining one text's targets: one forward row to find them, then the k
    explanations side by side."""
    tokens, scores, found = yield from text_targets(model, text, cfg)
    done = yield from together([explanation(model, tokens, cfg, PerTokenQuestion(tokens, t)) for t in found])
    predicted = tuple(model.label(int(i)) or str(int(i)) for i in np.argmax(scores[:len(tokens)], axis=1))
    targets = tuple(
        TokenTarget(text=text[min(tokens.offsets[i][0] for i in t.positions):
                              max(tokens.offsets[i][1] for i in t.positions)],
                    start=min(tokens.offsets[i][0] for i in t.positions),
                    end=max(tokens.offsets[i][1] for i in t.positions), positions=t.positions,
                    label=t.name, contrast=t.contrast_name, explanation=e)
        for t, e in zip(found, done, strict=True))
    notes = () if found else ("no token is predicted as an entity (every prediction is O): nothing to explain; "
                              "--at INDEX|WORD explains a position anyway",)
    shared = done[0].notes if done else ()
    return TokenTargets(text=text, model=model.name, method=cfg.method, predicted=predicted, targets=targets,
                        notes=notes + shared)
