"""Prepared folders: a model loaded once where onnx is installed, written so that an edge install
(onnxruntime, numpy and tokenizers only) loads the same model without any graph surgery.

``blackbox-sal grad MODEL --folder OUT`` (:func:`blackbox_sal.gradient_graph.store.prepare`)
writes::

    OUT/
      model.onnx      the loaded body: takes inputs_embeds (and the model's other inputs), every
                      load-time rewrite done (split at the lookup, dequantized, one choice at a
                      time, last position, pooled); every tensor inline and dense
      embeddings.npy  the [vocab, dim] float32 table the split took out
      grad.onnx       its gradient graph, verified against finite differences
      tokenizer.json  copied from the model folder
      config.json     {"name", "id2label", "max_length", "gradient_model": "grad.onnx",
                       "prepared": {"format": 1, "by", "output", "task", "origin", "pooling",
                                    "quantized", "twin_of", "weight_only", "fixed_length",
                                    "fixed_batch", "pad_id"}}

Loading one (:func:`load_prepared`) never imports onnx: both ONNX files are checked by
:mod:`blackbox_sal.model.wire` (nothing external, nothing sparse, allowed operator domains
everywhere, size caps) and handed to onnxruntime as bytes; inputs and shapes come from the
onnxruntime session; the gradient graph runs in its plain form and is verified against finite
differences of the model's own session when first used, as every graph is. This path is taken
for prepared folders whether or not onnx is installed, so the full install runs exactly what
the edge runs.
"""

from __future__ import annotations

from blackbox_sal.model import files
from blackbox_sal.model.inputs import fixed_dims, int_inputs, pad_id, row_coupled
from blackbox_sal.model.model_config import ModelConfig, Prepared
from blackbox_sal.model.session import create_session
from blackbox_sal.model.text_model import Runtime, TextModel
from blackbox_sal.surgery.channels import Channel
from blackbox_sal.surgery.names import EMBEDS
from blackbox_sal.vocabulary.differences import mean_row_norm
from blackbox_sal.vocabulary.errors import ModelError, UsageError

#: the file names of a prepared folder
MODEL, TABLE, GRAD, TOKENIZER, CONFIG = "model.onnx", "embeddings.npy", "grad.onnx", "tokenizer.json", "config.json"


def load_prepared(found: files.ModelFiles, config: ModelConfig, *, device: str = "auto", output: str | None = None,
                  threads: int = 0, dequantize: bool = False, pooling: str | None = None,
                  normalize: bool | None = None) -> TextModel:
    """The model a prepared folder holds (see the module doc); ModelError (exit 3) for a folder
    that does not hold what its config.json says, UsageError (exit 2) for a load option that
    would need the surgery done again."""
    block = config.prepared
    assert block is not None
    where = str(found.onnx_path.parent)
    again = "prepare it again from the original folder (blackbox-sal grad MODEL --folder OUT)"
    if config.input_kind != "text":
        raise ModelError(f"{where!r} is a prepared folder, which holds a text model, but config.json says "
                         f"input_kind {config.input_kind!r}")
    if output is not None and output != block.output:
        raise UsageError(f"{where!r} was prepared to explain output {block.output!r}, not {output!r}: {again} "
                         f"with --model-output")
    if dequantize and not block.twin_of:
        raise UsageError("--dequantize: the model has no integer operators to dequantize" if not block.quantized
                         else f"--dequantize: {where!r} was prepared without it: {again} with --dequantize")
    if block.task == "embedding" and (pooling is not None or normalize is not None):
        raise UsageError(f"{where!r} was prepared with its pooling fixed ({block.pooling}): {again} with "
                         f"--pooling / --normalize")
    session = create_session(files.read_plain_onnx(found.onnx_path), device, threads)
    if block.output not in {o.name for o in session.get_outputs()}:
        raise ModelError(f"config.json names the prepared output {block.output!r}, which model.onnx does not have "
                         f"(outputs: {', '.join(o.name for o in session.get_outputs())})")
    embeds = next((i for i in session.get_inputs() if i.name == EMBEDS), None)
    if embeds is None:
        raise ModelError(f"a prepared model.onnx must take {EMBEDS!r}; {where!r} does not")
    ints, mask_rank = int_inputs(session)
    fixed_batch, fixed_length = fixed_dims(session)
    if fixed_batch is None and row_coupled(block.quantized):
        fixed_batch = 1  # as load_model runs it (one row at a time)
    if (fixed_length, fixed_batch) != (block.fixed_length, block.fixed_batch):
        raise ModelError(f"model.onnx takes length {fixed_length} and batch {fixed_batch}, config.json's prepared "
                         f"block says {block.fixed_length} and {block.fixed_batch}: they do not belong together")
    if found.embeddings_path is None:
        raise ModelError(f"the prepared folder {where!r} has no {TABLE}")
    shape = list(embeds.shape or ())
    width = shape[-1] if shape and isinstance(shape[-1], int) and shape[-1] > 0 else None
    table = files.read_table(found.embeddings_path, width=width)
    tokenizer = files.read_tokenizer(files.require_tokenizer(found))
    pad = pad_id(tokenizer, found.onnx_path.parent)  # before the padding section is dropped
    tokenizer.no_truncation()
    tokenizer.no_padding()
    vocab = tokenizer.get_vocab_size(with_added_tokens=True)
    if vocab > table.shape[0]:
        raise ModelError(f"the tokenizer has {vocab} tokens but the embedding table only "
                         f"{table.shape[0]} rows: they do not belong together")
    stops = [c[3] for c in block.channels]
    if stops and ([(c[2], c[3]) for c in block.channels] != list(zip([0, *stops[:-1]], stops, strict=True))
                  or stops[-1] != table.shape[1]):
        raise ModelError(f"config.json's prepared block lays out channels {[list(c) for c in block.channels]} over "
                         f"embeddings of {table.shape[1]} dimensions: they do not belong together")
    if pad != block.pad_id:
        raise ModelError(f"the tokenizer's pad token is {pad}, config.json's prepared block says "
                         f"{block.pad_id}: they do not belong together")
    model = TextModel(
        name=found.name, tokenizer=tokenizer, table=table, runtime=Runtime(session, device, threads),
        output=block.output, labels=config.labels, max_length=config.max_length or fixed_length, origin=block.origin,
        int_inputs=ints, row_norm=mean_row_norm(table), body=None, config=config,
        folder=found.onnx_path.parent, quantized=block.quantized,
        task=block.task, twin_of=block.twin_of, weight_only=block.weight_only, fixed_length=fixed_length,
        fixed_batch=fixed_batch, mask_rank=mask_rank, pad_id=pad, pooling=block.pooling,
        channels=tuple(Channel(*c) for c in block.channels),
    )
    ids, types, mask = model.probe()
    model.forward(model.embed(ids)[None], ids, types, mask)  # the explained output is [batch, classes]
    return model


def block_of(model: TextModel, by: str) -> Prepared:
    """The prepared block that makes a prepared folder load as ``model`` (written by ``by``)."""
    return Prepared(output=model.output, task=model.task, origin=model.origin, pooling=model.pooling,
                    quantized=model.quantized, twin_of=model.twin_of, weight_only=model.weight_only,
                    fixed_length=model.fixed_length, fixed_batch=model.fixed_batch, pad_id=model.pad_id, by=by,
                    channels=tuple((c.name, c.input, c.start, c.stop) for c in model.channels))
