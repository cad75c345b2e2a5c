"""Export tiny random T5 and BART models as encoder/decoder pairs in Hugging Face optimum's layout.

    python models/build_seq2seq.py                 # ~10 s on 2 cores; writes models/.cache/seq2seq-{t5,bart}/
    python models/build_seq2seq.py --width 256 --layers 4   # seq2seq-{t5,bart}-256x4/ (the benchmark's)

No download: the configurations are tiny (d_model 16, 2 heads, 2 + 2 layers, a 48-word
vocabulary; ``--width``/``--layers`` for bigger ones) with random weights from
``torch.manual_seed(0)`` (matrices N(0, 0.25^2 16/width)); the tokenizer is a word-level
``tokenizers`` file written here. Each folder holds what optimum writes for a seq2seq export
with past key values (the two decoders apart, and merged):

- ``encoder_model.onnx``: ``input_ids``, ``attention_mask`` int64 [batch, source] ->
  ``last_hidden_state`` float32 [batch, source, 16];
- ``decoder_model.onnx``: ``input_ids`` int64 [batch, target], ``encoder_attention_mask`` int64
  [batch, source], ``encoder_hidden_states`` float32 [batch, source, 16] -> ``logits`` float32
  [batch, target, vocab] and ``present.<layer>.<decoder|encoder>.<key|value>`` [batch, heads,
  target|source, head dim] (the cache generation starts from);
- ``decoder_with_past_model.onnx``: the same three inputs with ``input_ids`` [batch, 1] (the new
  token) and ``past_key_values.<layer>.<decoder|encoder>.<key|value>`` -> ``logits`` [batch, 1,
  vocab] and the decoder's ``present.<layer>.decoder.<key|value>`` (one position longer);
- ``decoder_model_merged.onnx``: the two in one graph, as optimum's post-processing merges them
  (an ``If`` on a ``use_cache_branch`` bool input; :func:`merge_decoders`);
- ``tokenizer.json`` (the source gets ``</s>`` appended, as T5's and BART's tokenizers do),
  ``config.json`` (``model_type``, ``decoder_start_token_id``, ``eos_token_id``,
  ``pad_token_id``), ``torch_model/`` (``save_pretrained``, for the tests' autograd checks and
  the benchmark).

and ``seq2seq-single/``, the single-graph form (one ``model.onnx`` taking ``src`` and ``tgt_in``,
returning ``token_logits``; see :func:`export_single`), and ``seq2seq-gru/``, the same form
with GRU layers (explained by finite differences).

Both wrappers are the whole model's forward (``model(encoder_outputs=..., decoder_input_ids=...)``)
so T5's tied-head scaling and BART's ``final_logits_bias`` are in the decoder graph; exported
with ``torch.onnx.export(dynamo=False, opset_version=17)``, dynamic batch and length axes
(the tracer's warnings about shape-dependent branches are checked by the tests: greedy
generation equals PyTorch's at every prefix length from 1 on).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
CACHE = HERE / ".cache"

WORDS = ("the a cat dog sat on mat ran fast slow big small red blue house tree bird sings loud quiet "
         "today is was and but not very good bad day night sun moon eat food water drink hello world "
         "is green happy sad").split()
SPECIALS = {"t5": ["<pad>", "</s>", "<unk>"], "bart": ["<s>", "<pad>", "</s>", "<unk>"]}
#: model_type -> (decoder_start_token_id, eos_token_id, pad_token_id)
START = {"t5": (0, 1, 0), "bart": (2, 2, 1)}


def vocabulary(kind: str) -> dict[str, int]:
    vocab: dict[str, int] = {}
    for w in [*SPECIALS[kind], *WORDS]:
        vocab.setdefault(w, len(vocab))
    return vocab


def write_tokenizer(kind: str, folder: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    vocab = vocabulary(kind)
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    eos = "</s>"
    tok.post_processor = processors.TemplateProcessing(single=f"$A {eos}", special_tokens=[(eos, vocab[eos])])
    tok.add_special_tokens([s for s in SPECIALS[kind]])
    tok.save(str(folder / "tokenizer.json"))


def build_torch(kind: str, width: int = 16, layers: int = 2) -> Any:
    import torch
    from transformers import BartConfig, BartForConditionalGeneration, T5Config, T5ForConditionalGeneration

    torch.manual_seed(0)
    start, eos, pad = START[kind]
    vocab = len(vocabulary(kind))
    if kind == "t5":
        config = T5Config(vocab_size=vocab, d_model=width, d_kv=width // 2, d_ff=2 * width, num_layers=layers,
                          num_decoder_layers=layers,
                          num_heads=2, relative_attention_num_buckets=8, dropout_rate=0.0,
                          decoder_start_token_id=start, eos_token_id=eos, pad_token_id=pad)
        model = T5ForConditionalGeneration(config)
    else:
        config = BartConfig(vocab_size=vocab, d_model=width, encoder_layers=layers, decoder_layers=layers,
                            encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=2 * width,
                            decoder_ffn_dim=2 * width, max_position_embeddings=64, dropout=0.0, attention_dropout=0.0,
                            activation_dropout=0.0, decoder_start_token_id=start, eos_token_id=eos,
                            pad_token_id=pad, bos_token_id=0, forced_eos_token_id=None)
        model = BartForConditionalGeneration(config)
    with torch.no_grad():  # random weights large enough that greedy outputs differ from step to step
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.25 * (16 / width) ** 0.5)
    return model.eval()


def presents(cache: Any, layers: int, cross: bool = True) -> list[Any]:
    """A transformers EncoderDecoderCache as optimum's flat present.* list: per layer the
    decoder's key and value, then (``cross``) the encoder's."""
    flat = []
    for i in range(layers):
        own, other = cache.self_attention_cache.layers[i], cache.cross_attention_cache.layers[i]
        flat += [own.keys, own.values, *((other.keys, other.values) if cross else ())]
    return flat


def export(kind: str, out: Path, width: int = 16, layers: int = 2) -> Path:
    import torch
    from transformers.cache_utils import DynamicCache, EncoderDecoderCache
    from transformers.modeling_outputs import BaseModelOutput

    folder = out / (f"seq2seq-{kind}" if (width, layers) == (16, 2) else f"seq2seq-{kind}-{width}x{layers}")
    folder.mkdir(parents=True, exist_ok=True)
    model = build_torch(kind, width, layers)
    model.save_pretrained(str(folder / "torch_model"))
    write_tokenizer(kind, folder)
    start, eos, pad = START[kind]
    (folder / "config.json").write_text(json.dumps({
        "model_type": kind, "is_encoder_decoder": True, "decoder_start_token_id": start,
        "eos_token_id": eos, "pad_token_id": pad, "vocab_size": len(vocabulary(kind))}, indent=1))

    class Encoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.m = model

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            return self.m.get_encoder()(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    class Decoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.m = model

        def forward(self, input_ids: torch.Tensor, encoder_attention_mask: torch.Tensor,
                    encoder_hidden_states: torch.Tensor) -> tuple[torch.Tensor, ...]:
            out = self.m(encoder_outputs=BaseModelOutput(last_hidden_state=encoder_hidden_states),
                         attention_mask=encoder_attention_mask, decoder_input_ids=input_ids, use_cache=True)
            return (out.logits, *presents(out.past_key_values, layers))

    class DecoderWithPast(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.m = model

        def forward(self, input_ids: torch.Tensor, encoder_attention_mask: torch.Tensor,
                    encoder_hidden_states: torch.Tensor, *past: torch.Tensor) -> tuple[torch.Tensor, ...]:
            cache = EncoderDecoderCache(DynamicCache([(past[4 * i], past[4 * i + 1]) for i in range(layers)]),
                                        DynamicCache([(past[4 * i + 2], past[4 * i + 3]) for i in range(layers)]))
            out = self.m(encoder_outputs=BaseModelOutput(last_hidden_state=encoder_hidden_states),
                         attention_mask=encoder_attention_mask, decoder_input_ids=input_ids,
                         past_key_values=cache, use_cache=True)
            return (out.logits, *presents(out.past_key_values, layers, cross=False))

    ids = torch.tensor([[5, 6, 7, 8, eos]] * 2)
    mask = torch.ones_like(ids)
    with torch.no_grad():
        states = Encoder()(ids, mask)
    dec = torch.tensor([[start, 9, 10]] * 2)
    torch.onnx.export(Encoder(), (ids, mask), str(folder / "encoder_model.onnx"), dynamo=False, opset_version=17,
                      input_names=["input_ids", "attention_mask"], output_names=["last_hidden_state"],
                      dynamic_axes={"input_ids": {0: "batch", 1: "source"}, "attention_mask": {0: "batch", 1: "source"},
                                    "last_hidden_state": {0: "batch", 1: "source"}})
    kv = [f"{i}.{side}.{part}" for i in range(layers) for side in ("decoder", "encoder") for part in ("key", "value")]
    length = {"decoder": "target", "encoder": "source"}
    torch.onnx.export(Decoder(), (dec, mask, states), str(folder / "decoder_model.onnx"), dynamo=False,
                      opset_version=17, input_names=["input_ids", "encoder_attention_mask", "encoder_hidden_states"],
                      output_names=["logits", *(f"present.{n}" for n in kv)],
                      dynamic_axes={"input_ids": {0: "batch", 1: "target"},
                                    "encoder_attention_mask": {0: "batch", 1: "source"},
                                    "encoder_hidden_states": {0: "batch", 1: "source"},
                                    "logits": {0: "batch", 1: "target"},
                                    **{f"present.{n}": {0: "batch", 2: length[n.split(".")[1]]} for n in kv}})
    with torch.no_grad():
        past = Decoder()(dec, mask, states)[1:]
    own = [n for n in kv if ".decoder." in n]
    torch.onnx.export(DecoderWithPast(), (dec[:, -1:], mask, states, *past),
                      str(folder / "decoder_with_past_model.onnx"), dynamo=False, opset_version=17,
                      input_names=["input_ids", "encoder_attention_mask", "encoder_hidden_states",
                                   *(f"past_key_values.{n}" for n in kv)],
                      output_names=["logits", *(f"present.{n}" for n in own)],
                      dynamic_axes={"input_ids": {0: "batch"}, "encoder_attention_mask": {0: "batch", 1: "source"},
                                    "encoder_hidden_states": {0: "batch", 1: "source"}, "logits": {0: "batch"},
                                    **{f"past_key_values.{n}": {0: "batch", 2: "past_" + length[n.split(".")[1]]}
                                       for n in kv},
                                    **{f"present.{n}": {0: "batch", 2: "total"} for n in own}})
    merge_decoders(folder)
    check(folder, model, kind)
    return folder


def merge_decoders(folder: Path) -> Path:
    """``decoder_model_merged.onnx`` from the folder's two decoders, as optimum's post-processing
    merges them: one ``If`` on a ``use_cache_branch`` bool [1] input, the with-past decoder in
    its then branch (the encoder's past passed through as its presents), the decoder without
    past in its else branch; the inputs are the union (``past_key_values.*`` unread by the else
    branch)."""
    import onnx
    from onnx import helper

    first = onnx.load(str(folder / "decoder_model.onnx"))
    then = onnx.load(str(folder / "decoder_with_past_model.onnx"))
    outs = [o.name for o in first.graph.output]
    rank = {o.name: len(o.type.tensor_type.shape.dim) for o in first.graph.output}
    branches = []
    for prefix, model in (("with_past/", then), ("no_past/", first)):
        g = model.graph
        names = {n for node in g.node for n in node.output} | {t.name for t in g.initializer}
        for node in g.node:
            node.input[:] = [prefix + i if i in names else i for i in node.input]
            node.output[:] = [prefix + o for o in node.output]
            node.name = prefix + node.name
        for t in g.initializer:
            t.name = prefix + t.name
        produced = {o.name for o in g.output}
        for name in outs:  # the encoder's presents: its past, unchanged
            if name not in produced:
                g.node.append(helper.make_node("Identity", ["past_key_values." + name[len("present."):]],
                                               [prefix + name]))
        branch = helper.make_graph(list(g.node), prefix.strip("/"), [], [
            helper.make_tensor_value_info(prefix + name, onnx.TensorProto.FLOAT, [None] * rank[name]) for name in outs],
            list(g.initializer))
        branches.append(branch)
    inputs = [*first.graph.input, *(i for i in then.graph.input if i.name.startswith("past_key_values.")),
              helper.make_tensor_value_info("use_cache_branch", onnx.TensorProto.BOOL, [1])]
    node = helper.make_node("If", ["use_cache_branch"], outs, then_branch=branches[0], else_branch=branches[1])
    graph = helper.make_graph([node], "merged", inputs, [
        helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, [None] * rank[name]) for name in outs])
    merged = helper.make_model(graph, opset_imports=first.opset_import, ir_version=first.ir_version)
    onnx.checker.check_model(merged)
    onnx.save(merged, str(folder / "decoder_model_merged.onnx"))
    return folder / "decoder_model_merged.onnx"


def gru_module(vocab: int, width: int = 16) -> Any:
    """A recurrent single graph (GRU encoder and decoder, dot-product attention): its ONNX GRU
    has no reverse rule, so it is explained by finite differences."""
    import torch
    from torch import nn

    class Recurrent(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.source = nn.Embedding(vocab, width)
            self.target = nn.Embedding(vocab, width)
            self.enc = nn.GRU(width, width, batch_first=True)
            self.dec = nn.GRU(width, width, batch_first=True)
            self.out = nn.Linear(2 * width, vocab)

        def forward(self, src: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
            return self.run(self.source(src), self.target(tgt_in))

        def run(self, xs: torch.Tensor, xt: torch.Tensor) -> torch.Tensor:
            h, _ = self.enc(xs)
            q, _ = self.dec(xt)
            a = torch.softmax(q @ h.transpose(1, 2), -1)
            return self.out(torch.cat([q, a @ h], -1))

    return Recurrent()


def single_module(vocab: int, width: int = 16) -> Any:
    """The single-graph form's stand-in: separate source and target tables, a tanh encoder, a
    causal running mean over the prefix, dot-product attention, logits per step."""
    import torch
    from torch import nn

    class Single(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.source = nn.Embedding(vocab, width)
            self.target = nn.Embedding(vocab, width)
            self.enc = nn.Linear(width, width)
            self.dec = nn.Linear(width, width)
            self.out = nn.Linear(2 * width, vocab)

        def forward(self, src: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
            h = torch.tanh(self.enc(self.source(src)))
            e = self.target(tgt_in)
            count = torch.cumsum(torch.ones_like(tgt_in, dtype=e.dtype), 1).unsqueeze(-1)
            q = torch.tanh(self.dec(torch.cumsum(e, 1) / count))
            a = torch.softmax(q @ h.transpose(1, 2), -1)
            return self.out(torch.cat([q, a @ h], -1))

    return Single()


def export_single(out: Path, recurrent: bool = False) -> Path:
    """``seq2seq-single/``: ``model.onnx`` taking ``src`` and ``tgt_in`` int64 [batch, length],
    returning ``token_logits`` [batch, target, vocab] (small recurrent spellers ship this way);
    ``torch_single.pt`` (its state dict, for the tests), T5's tokenizer and ids."""
    import numpy as np
    import onnxruntime as ort
    import torch

    folder = out / ("seq2seq-gru" if recurrent else "seq2seq-single")
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    vocab = len(vocabulary("t5"))
    model = (gru_module if recurrent else single_module)(vocab).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.5)
    torch.save(model.state_dict(), folder / "torch_single.pt")
    write_tokenizer("t5", folder)
    start, eos, pad = START["t5"]
    (folder / "config.json").write_text(json.dumps({
        "is_encoder_decoder": True, "decoder_start_token_id": start, "eos_token_id": eos, "pad_token_id": pad},
        indent=1))
    src, tgt = torch.tensor([[5, 6, 7, 1]] * 2), torch.tensor([[0, 9, 10]] * 2)
    torch.onnx.export(model, (src, tgt), str(folder / "model.onnx"), dynamo=False, opset_version=17,
                      input_names=["src", "tgt_in"], output_names=["token_logits"],
                      dynamic_axes={"src": {0: "batch", 1: "source"}, "tgt_in": {0: "batch", 1: "target"},
                                    "token_logits": {0: "batch", 1: "target"}})
    s2, t2 = np.array([[3, 12, 14, 20, 1]]), np.array([[0, 11, 12, 13, 14, 15]])
    got = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"]).run(
        None, {"src": s2, "tgt_in": t2})[0]
    with torch.no_grad():
        ref = model(torch.from_numpy(s2), torch.from_numpy(t2)).numpy()
    err = float(np.abs(got - ref).max() / np.abs(ref).max())
    print(f"{folder.name}: onnxruntime == PyTorch to {err:.1e} (relative, max)")
    if err > 1e-5:
        sys.exit(f"{folder.name}: the export disagrees with PyTorch ({err:.1e})")
    return folder


def check(folder: Path, model: Any, kind: str) -> None:
    """onnxruntime's logits equal PyTorch's on a length the export did not trace."""
    import numpy as np
    import onnxruntime as ort
    import torch

    ids = np.array([[3, 12, 14, 20, 22, 30, START[kind][1]]], np.int64)
    mask = np.ones_like(ids)
    dec = np.array([[START[kind][0], 11, 12, 13, 14]], np.int64)
    enc = ort.InferenceSession(str(folder / "encoder_model.onnx"), providers=["CPUExecutionProvider"])
    decs = ort.InferenceSession(str(folder / "decoder_model.onnx"), providers=["CPUExecutionProvider"])
    states = enc.run(None, {"input_ids": ids, "attention_mask": mask})[0]
    logits = decs.run(None, {"input_ids": dec, "encoder_attention_mask": mask, "encoder_hidden_states": states})[0]
    with torch.no_grad():
        ref = model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                    decoder_input_ids=torch.from_numpy(dec), use_cache=False).logits.numpy()
    err = float(np.abs(logits - ref).max() / np.abs(ref).max())
    print(f"{folder.name}: onnxruntime == PyTorch to {err:.1e} (relative, max)")
    if err > 1e-5:
        sys.exit(f"{folder.name}: the export disagrees with PyTorch ({err:.1e})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(CACHE), help="folder for seq2seq-t5/ and seq2seq-bart/")
    ap.add_argument("--kind", choices=("t5", "bart", "both"), default="both")
    ap.add_argument("--width", type=int, default=16, help="d_model (the tests use 16; the benchmark also 256)")
    ap.add_argument("--layers", type=int, default=2, help="encoder and decoder layers each")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(2)
    for kind in ("t5", "bart") if args.kind == "both" else (args.kind,):
        print(export(kind, Path(args.out), args.width, args.layers))
    if (args.width, args.layers) == (16, 2):
        print(export_single(Path(args.out)))
        print(export_single(Path(args.out), recurrent=True))


if __name__ == "__main__":
    main()
