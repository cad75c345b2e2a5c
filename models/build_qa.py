"""Build a tiny extractive question-answering export: a ``BertForQuestionAnswering`` with random
weights and a small word-level vocabulary, exported by ``torch.onnx.export`` (``dynamo=False``,
opset 17) with dynamic batch and sequence axes, as Hugging Face ``...ForQuestionAnswering``
exports are laid out:

- inputs ``input_ids``, ``attention_mask``, ``token_type_ids`` int64 [batch, sequence];
- outputs ``start_logits`` and ``end_logits`` float32 [batch, sequence].

    python models/build_qa.py                    # writes models/.cache/tiny-qa (a few seconds)
    python models/build_qa.py --out DIR
    python models/build_qa.py --committed        # writes models/tiny-qa (committed; no torch at test time)

The folder holds ``model.onnx``, ``tokenizer.json`` (a BERT WordPiece tokenizer over
:data:`WORDS`, lower-cased, with the pair template ``[CLS] A [SEP] B [SEP]``, type ids 0 then
1), ``config.json`` (``max_position_embeddings`` 64) and ``model.pt``, the PyTorch state dict,
so the tests can compare attributions with PyTorch autograd on the same weights
(:func:`torch_model` rebuilds the module from it). Seeded: the same files every time.

``--committed`` writes ``models/tiny-qa/``, the folder ``tests/test_spans.py`` reads where torch
is not installed (CI): the same ``model.onnx``, ``tokenizer.json``, ``config.json``, no
``model.pt``, and ``reference.npz``, PyTorch's answers on :data:`QUESTION` and :data:`CONTEXT`
(see :func:`reference`).
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent

#: the vocabulary after the special tokens: enough words for questions about a short context
WORDS = ("the", "a", "of", "in", "is", "was", "who", "what", "where", "when", "which", "did", "built", "wrote",
         "city", "tower", "paris", "london", "river", "bridge", "book", "year", "old", "new", "by", "and", "on",
         "to", "it", "eiffel", "gustave", "seine", "museum", "painting", "louvre", "famous", "tall", "iron",
         "?", ".", ",", "1889", "1793", "france", "capital", "flows", "through")
SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
MAX_POSITIONS = 64
SEED = 23
#: the pair the committed reference is computed on (``tests/test_spans.py`` explains it)
QUESTION = "who built the eiffel tower ?"
CONTEXT = "the eiffel tower was built by gustave eiffel in 1889 ."
COMMITTED = HERE / "tiny-qa"


def vocabulary() -> list[str]:
    seen: dict[str, None] = dict.fromkeys(SPECIALS)
    seen.update(dict.fromkeys(WORDS))
    return list(seen)


def tokenizer_json() -> str:
    """A BERT WordPiece tokenizer over :func:`vocabulary` (one word a token), as a JSON string."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordPiece

    vocab = {w: i for i, w in enumerate(vocabulary())}
    tok = Tokenizer(WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    for special in SPECIALS:
        tok.add_special_tokens([special])
    return str(tok.to_str())


def bert_config() -> Any:
    from transformers import BertConfig

    return BertConfig(vocab_size=len(vocabulary()), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                      intermediate_size=64, max_position_embeddings=MAX_POSITIONS, type_vocab_size=2,
                      initializer_range=0.2,  # ten times BERT's: attention that mixes tokens, spread-out logits
                      hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, attn_implementation="eager")


def torch_model(folder: Path) -> Any:
    """The PyTorch module the export was made from (eval mode, float32), from ``model.pt``."""
    import torch
    from transformers import BertForQuestionAnswering

    model = BertForQuestionAnswering(bert_config())
    model.load_state_dict(torch.load(folder / "model.pt", weights_only=True))
    return model.eval()


def build(out: Path) -> Path:
    """Write the export into ``out`` (created); returns ``out``."""
    import torch
    from transformers import BertForQuestionAnswering

    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(SEED)
    model = BertForQuestionAnswering(bert_config()).eval()
    with torch.no_grad():  # a larger QA head: the span logits spread out, so the best span is clear
        model.qa_outputs.weight.mul_(2.0)
    torch.save(model.state_dict(), out / "model.pt")
    ids = torch.tensor([[2, 6, 7, 3, 5, 8, 3]], dtype=torch.int64)
    mask, types = torch.ones_like(ids), torch.tensor([[0, 0, 0, 0, 1, 1, 1]], dtype=torch.int64)
    axes = {0: "batch", 1: "sequence"}

    class Wrapped(torch.nn.Module):  # plain tensors out (not a ModelOutput), named as HF exports name them
        def __init__(self) -> None:
            super().__init__()
            self.inner = model

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> tuple[Any, Any]:
            o = self.inner(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
            return o.start_logits, o.end_logits

    with warnings.catch_warnings():  # the legacy exporter's deprecation and the tracer's notes
        warnings.simplefilter("ignore")
        torch.onnx.export(Wrapped(), (ids, mask, types), str(out / "model.onnx"), dynamo=False, opset_version=17,
                          input_names=["input_ids", "attention_mask", "token_type_ids"],
                          output_names=["start_logits", "end_logits"],
                          dynamic_axes={"input_ids": axes, "attention_mask": axes, "token_type_ids": axes,
                                        "start_logits": axes, "end_logits": axes})
    (out / "tokenizer.json").write_text(tokenizer_json(), encoding="utf-8")
    (out / "config.json").write_text(json.dumps({"name": "tiny-qa", "architectures": ["BertForQuestionAnswering"],
                                                 "max_position_embeddings": MAX_POSITIONS}, indent=2) + "\n",
                                     encoding="utf-8")
    return out


def reference(folder: Path, question: str = QUESTION, context: str = CONTEXT) -> dict[str, Any]:
    """PyTorch's answers on the pair, as numpy arrays: ``start`` and ``end`` logits [S] (float64),
    ``span`` (i, j), the best span of at most 30 context tokens, ``emb`` the word embeddings [S, D]
    and ``grad_start``, ``grad_end``, ``grad_span`` = d start[i], d end[j], d (start[i] + end[j])
    with respect to them [S, D], float64. The pair is tokenized as blackbox-sal tokenizes it."""
    import numpy as np
    import torch

    from blackbox_sal.api.spans import best_spans, token_parts
    from blackbox_sal.model.loading import load_model
    from blackbox_sal.text.tokenization import tokenize_pair

    model = load_model(folder)
    net = torch_model(folder)
    tokens = tokenize_pair(model.tokenizer, question, context, model.max_length)
    ids = torch.tensor(tokens.ids[None], dtype=torch.int64)
    types = torch.tensor(tokens.type_ids[None], dtype=torch.int64)
    emb = net.bert.embeddings.word_embeddings(ids).detach().requires_grad_(True)
    out = net(inputs_embeds=emb, token_type_ids=types, attention_mask=torch.ones_like(ids))
    start, end = out.start_logits[0], out.end_logits[0]
    parts = token_parts(tokens, len(question) + 1)
    i, j = best_spans(start.detach().numpy(), end.detach().numpy(), np.array([p == "context" for p in parts]),
                      30)[0]
    got: dict[str, Any] = {"ids": np.asarray(tokens.ids, dtype=np.int64),
                           "start": start.detach().double().numpy(), "end": end.detach().double().numpy(),
                           "span": np.array([i, j], dtype=np.int64), "emb": emb[0].detach().double().numpy()}
    for name, scalar in (("start", start[i]), ("end", end[j]), ("span", start[i] + end[j])):
        (g,) = torch.autograd.grad(scalar, emb, retain_graph=True)
        got[f"grad_{name}"] = g[0].double().numpy()
    return got


def build_committed(out: Path = COMMITTED) -> Path:
    """Write the export and its PyTorch reference into ``out`` (``models/tiny-qa``), without the
    state dict: what the tests need where torch is not installed."""
    import tempfile

    import numpy as np

    with tempfile.TemporaryDirectory() as scratch:
        built = build(Path(scratch) / "tiny-qa")
        ref = reference(built)
        out.mkdir(parents=True, exist_ok=True)
        for name in ("model.onnx", "tokenizer.json", "config.json"):
            (out / name).write_bytes((built / name).read_bytes())
    np.savez_compressed(out / "reference.npz", **ref)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=HERE / ".cache" / "tiny-qa")
    parser.add_argument("--committed", action="store_true",
                        help="write models/tiny-qa: the export and PyTorch's reference.npz, no model.pt")
    args = parser.parse_args()
    print(build_committed() if args.committed else build(args.out))


if __name__ == "__main__":
    main()
