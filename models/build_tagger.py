"""Build a tiny BERT-style named-entity tagger, export it to ONNX, and store PyTorch autograd's
answers on per-token targets (the reference ``tests/test_per_token.py`` checks against).

    python models/build_tagger.py            # ~10 s on 2 cores; torch 2.13.0

Writes ``models/tiny-tagger/``:

- ``model.onnx``: inputs ``input_ids``, ``attention_mask`` int64 [batch, seq]; output ``logits``
  float32 [batch, seq, 5] (labels O, B-PER, I-PER, B-LOC, I-LOC). A word embedding (16 wide),
  learned positions, one self-attention block (2 heads, an additive mask) with a GELU
  feed-forward and LayerNorms, a linear tagger head. ``torch.onnx.export(dynamo=False,
  opset_version=17)``.
- ``tokenizer.json``: word level, lower-cased, with [CLS] ... [SEP]; ``config.json``: ``id2label``.
- ``reference.npz``: for each text of ``TEXTS`` (unpadded, one at a time): ``ids_<n>`` int64 [S],
  ``embeddings_<n>`` float32 [S, 16] (the word embedding vectors, before positions), ``logits_<n>``
  [S, 5], and the gradients of three scalars with respect to the word embeddings, float64
  [S, 16]: ``grad_token_<n>`` = d logits[pos, label] / dE for ``target_<n>`` = (pos, label);
  ``grad_entity_<n>`` = d (sum over the first predicted entity's tokens of their predicted
  label's logit) / dE, that entity's token positions in ``entity_<n>``; ``grad_contrast_<n>``
  = d (logits[pos, label] - logits[pos, 0]) / dE (the label rather than O).

Trained for a few hundred steps on generated sentences (names are PER, cities LOC), so the
tagger predicts entities on real sentences; the weights are otherwise what the seed gives.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from torch import nn

LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
NAMES = ["ada lovelace", "alan turing", "grace hopper", "marie curie", "ada", "alan", "grace"]
CITIES = ["paris", "london", "new york", "buenos aires", "rome", "oslo"]
FILLER = ["the", "a", "met", "in", "lives", "visited", "and", "with", "from", "went", "to", "today", "yesterday",
          "film", "was", "good", "said", "that", "it", "rained", "."]
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
TEXTS = ["ada lovelace met alan turing in london .",
         "grace hopper visited new york and paris with marie curie today ."]
DIM = 16
OUT = Path(__file__).resolve().parent / "tiny-tagger"


def vocabulary() -> dict[str, int]:
    words = sorted({w for phrase in NAMES + CITIES for w in phrase.split()} | set(FILLER))
    return {w: i for i, w in enumerate(SPECIALS + words)}


def tokenizer(vocab: dict[str, int]) -> Tokenizer:
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.add_special_tokens(SPECIALS)
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    return tok


class Tagger(nn.Module):
    """Embeddings -> one attention block -> per-token label logits [batch, seq, 5]."""

    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.words = nn.Embedding(vocab, DIM, padding_idx=0)
        self.positions = nn.Parameter(torch.randn(64, DIM) * 0.1)
        self.qkv = nn.Linear(DIM, 3 * DIM)
        self.mix = nn.Linear(DIM, DIM)
        self.norm1 = nn.LayerNorm(DIM)
        self.up = nn.Linear(DIM, 2 * DIM)
        self.down = nn.Linear(2 * DIM, DIM)
        self.norm2 = nn.LayerNorm(DIM)
        self.head = nn.Linear(DIM, len(LABELS))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.from_embeddings(self.words(input_ids), attention_mask)

    def from_embeddings(self, e: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        b, s, _ = e.shape
        h = e + self.positions[:s]
        q, k, v = self.qkv(h).reshape(b, s, 3, 2, DIM // 2).permute(2, 0, 3, 1, 4)
        scores = q @ k.transpose(-1, -2) / (DIM // 2) ** 0.5
        scores = scores + (1.0 - attention_mask[:, None, None, :].to(e.dtype)) * -1e4
        mixed = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, s, DIM)
        h = self.norm1(h + self.mix(mixed))
        h = self.norm2(h + self.down(nn.functional.gelu(self.up(h))))
        return self.head(h)


def sentence(rng: np.random.Generator) -> tuple[list[str], list[int]]:
    """A generated sentence: filler words around names (PER) and cities (LOC), with tags."""
    words: list[str] = []
    tags: list[int] = []
    for _ in range(int(rng.integers(2, 6))):
        kind = rng.integers(0, 4)
        if kind == 0 or kind == 1:
            phrase = (NAMES if kind == 0 else CITIES)[int(rng.integers(0, len(NAMES if kind == 0 else CITIES)))]
            parts = phrase.split()
            words += parts
            tags += [1 + 2 * int(kind)] + [2 + 2 * int(kind)] * (len(parts) - 1)
        else:
            n = int(rng.integers(1, 4))
            words += [FILLER[int(i)] for i in rng.integers(0, len(FILLER), n)]
            tags += [0] * n
    return words, tags


def train(model: Tagger, vocab: dict[str, int], steps: int = 300) -> None:
    rng = np.random.default_rng(0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        batch = [sentence(rng) for _ in range(32)]
        s = max(len(w) for w, _ in batch) + 2
        ids = torch.zeros(32, s, dtype=torch.long)
        mask = torch.zeros(32, s, dtype=torch.long)
        tags = torch.full((32, s), -100, dtype=torch.long)
        for r, (words, t) in enumerate(batch):
            row = [vocab["[CLS]"]] + [vocab[w] for w in words] + [vocab["[SEP]"]]
            ids[r, :len(row)] = torch.tensor(row)
            mask[r, :len(row)] = 1
            tags[r, 1:1 + len(t)] = torch.tensor(t)
        loss = nn.functional.cross_entropy(model(ids, mask).reshape(-1, len(LABELS)), tags.reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()


def entities(predicted: np.ndarray) -> list[list[int]]:
    """Token positions of each predicted B-/I- entity (positions 1..S-2; [CLS]/[SEP] left out)."""
    spans: list[list[int]] = []
    for i in range(1, len(predicted) - 1):
        name = LABELS[int(predicted[i])]
        if name.startswith("B-") or (name.startswith("I-") and (not spans or spans[-1][-1] != i - 1
                                                                 or LABELS[int(predicted[i - 1])][2:] != name[2:])):
            spans.append([i])
        elif name.startswith("I-"):
            spans[-1].append(i)
    return spans


def gradient(model: Tagger, ids: torch.Tensor, pick: Callable[[torch.Tensor], torch.Tensor]) -> np.ndarray:
    """d pick(logits [S, 5]) / d word embeddings [S, 16] of one unpadded text, float64."""
    e = model.words(ids[None]).detach().requires_grad_(True)
    pick(model.from_embeddings(e, torch.ones(1, len(ids), dtype=torch.long))[0]).backward()
    assert e.grad is not None
    return e.grad[0].numpy()


def reference(model: Tagger, tok: Tokenizer) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    model = model.double()
    for n, text in enumerate(TEXTS):
        ids = torch.tensor(tok.encode(text).ids)
        with torch.no_grad():
            logits = model(ids[None], torch.ones(1, len(ids), dtype=torch.long))[0].numpy()
        predicted = logits.argmax(-1)
        spans = entities(predicted)
        pos, label, first = spans[0][0], int(predicted[spans[0][0]]), spans[0]
        tags = [int(predicted[i]) for i in first]
        out[f"ids_{n}"] = ids.numpy()
        out[f"embeddings_{n}"] = model.words(ids).detach().float().numpy()
        out[f"logits_{n}"] = logits
        out[f"target_{n}"] = np.array([pos, label])
        out[f"entity_{n}"] = np.array(first)
        out[f"grad_token_{n}"] = gradient(model, ids, lambda z, p=pos, c=label: z[p, c])
        out[f"grad_entity_{n}"] = gradient(
            model, ids, lambda z, ps=first, cs=tags: torch.stack([z[p, c] for p, c in zip(ps, cs, strict=True)]).sum())
        out[f"grad_contrast_{n}"] = gradient(model, ids, lambda z, p=pos, c=label: z[p, c] - z[p, 0])
        print(f"{text!r}: entities {[' '.join(tok.id_to_token(int(ids[i])) for i in s) for s in spans]}")
    return out


def main() -> None:
    torch.manual_seed(0)
    vocab = vocabulary()
    tok = tokenizer(vocab)
    model = Tagger(len(vocab))
    train(model, vocab)
    model.eval()
    OUT.mkdir(exist_ok=True)
    tok.save(str(OUT / "tokenizer.json"))
    (OUT / "config.json").write_text(json.dumps(
        {"id2label": dict(enumerate(LABELS)), "max_position_embeddings": 64}, indent=1) + "\n")
    ids = torch.tensor([tok.encode(TEXTS[0]).ids])
    torch.onnx.export(model, (ids, torch.ones_like(ids)), str(OUT / "model.onnx"), dynamo=False, opset_version=17,
                      input_names=["input_ids", "attention_mask"], output_names=["logits"],
                      dynamic_axes={"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"},
                                    "logits": {0: "batch", 1: "seq"}})
    np.savez(OUT / "reference.npz", **reference(model, tok))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
