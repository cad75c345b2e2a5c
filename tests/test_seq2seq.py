"""Encoder/decoder pairs (blackbox_sal.seq2seq): the chained gradient equals PyTorch autograd
through the whole model, greedy generation equals the PyTorch model's, IG is complete per step.

The pairs are tiny random T5 and BART exports built by ``models/build_seq2seq.py`` (~10 s; the
tests build them once into a temporary folder when torch and transformers are installed, and
skip with the reason otherwise)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from blackbox_sal.render.generation import generation_json, generation_terminal
from blackbox_sal.vocabulary.errors import ModelError, UsageError
from blackbox_sal.vocabulary.result import GenerationExplanation

ROOT = Path(__file__).resolve().parent.parent
SOURCE = "the cat sat on the mat"

needs_torch = pytest.mark.skipif(
    importlib.util.find_spec("torch") is None or importlib.util.find_spec("transformers") is None,
    reason="torch and transformers build the exports")


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if importlib.util.find_spec("torch") is None or importlib.util.find_spec("transformers") is None:
        pytest.skip("torch and transformers build the exports")
    out = tmp_path_factory.mktemp("seq2seq")
    subprocess.run([sys.executable, str(ROOT / "models" / "build_seq2seq.py"), "--out", str(out)], check=True,
                   capture_output=True, timeout=300)
    return out


@pytest.fixture(scope="module", params=["t5", "bart"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def loaded(exports: Path, kind: str) -> tuple[Any, Any]:
    from transformers import AutoModelForSeq2SeqLM

    from blackbox_sal.model.encoder_decoder import load_pair

    folder = exports / f"seq2seq-{kind}"
    return load_pair(folder), AutoModelForSeq2SeqLM.from_pretrained(str(folder / "torch_model")).eval()


def test_chained_gradient_equals_autograd_through_the_whole_model(loaded: tuple[Any, Any]) -> None:
    import torch

    from blackbox_sal.seq2seq.explaining import chained_gradients

    pair, torch_model = loaded
    src = np.array(pair.tokenizer.encode(SOURCE).ids, np.int64)
    out = np.array([10, 11, 12, 13, pair.eos_id], np.int64)
    prefix = np.array([pair.start_id, *out[:-1]], np.int64)
    x = pair.encoder_table[src][None].astype(np.float32)
    log_probs, g_source, g_prefix = chained_gradients(pair, x, src, prefix, out, batch_size=3)  # 2 runs of rows
    xs = torch.tensor(x, requires_grad=True)
    xp = torch.tensor(pair.decoder_table[prefix][None], requires_grad=True)
    logits = torch_model(inputs_embeds=xs, decoder_inputs_embeds=xp, use_cache=False).logits
    ref = torch.log_softmax(logits, -1)[0, torch.arange(len(out)), torch.from_numpy(out)]
    np.testing.assert_allclose(log_probs[0], ref.detach().numpy(), rtol=1e-5, atol=1e-5)
    for t in range(len(out)):
        a, b = (v[0].numpy() for v in torch.autograd.grad(ref[t], (xs, xp), retain_graph=True))
        assert np.abs(g_source[0, t] - a).max() <= 1e-4 * np.abs(a).max()
        assert np.abs(g_prefix[0, t] - b).max() <= 1e-4 * np.abs(b).max()
        assert np.abs(b[t + 1:]).max(initial=0.0) == 0.0  # causal: no later prefix token counts
        np.testing.assert_array_equal(g_prefix[0, t, t + 1:], 0.0)


def test_greedy_generation_equals_pytorch(loaded: tuple[Any, Any], kind: str) -> None:
    import torch

    from blackbox_sal.seq2seq.explaining import generate

    pair, torch_model = loaded
    for text in (SOURCE, "a big red bird sings loud today", "hello world"):
        src = np.array(pair.tokenizer.encode(text).ids, np.int64)
        ours = generate(pair, src, 6)
        ids = torch.from_numpy(src[None])
        prefix = torch.tensor([[pair.start_id]])
        with torch.no_grad():  # greedy by hand: generate()'s defaults (forced tokens, min length) vary by version
            for _ in range(6):
                nxt = torch_model(input_ids=ids, decoder_input_ids=prefix, use_cache=False).logits[0, -1].argmax()
                prefix = torch.cat([prefix, nxt.view(1, 1)], 1)
                if int(nxt) == pair.eos_id:
                    break
        assert ours == prefix[0, 1:].tolist(), (kind, text)


def test_integrated_gradients_are_complete_per_step(loaded: tuple[Any, Any], kind: str) -> None:
    """The gap closes as the points grow: tightly on BART (GELU, smooth), slowly on T5 (ReLU
    kinks: Gauss-Legendre's fast convergence needs a smooth integrand)."""
    from blackbox_sal.seq2seq.explaining import explain_generation

    pair, _ = loaded
    coarse = explain_generation(pair, SOURCE, target_text="good day and night", method="ig",
                                steps=8)
    fine = explain_generation(pair, SOURCE, target_text="good day and night", method="ig",
                              steps=128)
    assert coarse.deltas is not None and fine.deltas is not None
    assert len(fine.deltas) == len(fine.output_tokens) == 5  # 4 words and </s>
    gaps = np.abs(fine.deltas)
    spans = np.abs(np.sum(fine.source_scores, axis=1)) + 1e-3
    relative, absolute = {"bart": (1e-4, 1e-5), "t5": (0.1, 2e-3)}[kind]  # measured: bart 7e-7, t5 0.025
    assert (gaps <= relative * spans + absolute).all(), (fine.deltas, spans)
    assert gaps.sum() < np.abs(coarse.deltas).sum()
    # the prefix matrix is grad x input at the input, the same as grad-x-input's
    plain = explain_generation(pair, SOURCE, target_text="good day and night")
    np.testing.assert_allclose(fine.prefix_scores, plain.prefix_scores, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(fine.log_probs, plain.log_probs, rtol=1e-6)


def test_grad_x_input_is_the_gradient_times_the_embedding(loaded: tuple[Any, Any]) -> None:
    from blackbox_sal.seq2seq.explaining import chained_gradients, explain_generation

    pair, _ = loaded
    e = explain_generation(pair, SOURCE, target_text="good day")
    s = explain_generation(pair, SOURCE, target_text="good day", method="saliency")
    src = np.array(pair.tokenizer.encode(SOURCE).ids, np.int64)
    out = np.array(pair.tokenizer.encode("good day").ids, np.int64)
    prefix = np.array([pair.start_id, *out[:-1]], np.int64)
    x = pair.encoder_table[src].astype(np.float32)
    _, g, _ = chained_gradients(pair, x[None], src, prefix, out)
    np.testing.assert_allclose(e.source_scores, (g[0] * x).sum(-1), rtol=1e-6)
    np.testing.assert_allclose(s.source_scores, np.linalg.norm(g[0], axis=-1), rtol=1e-6)
    assert e.teacher_forced and e.output_tokens == ("good", "day", "</s>")
    assert e.prefix_tokens == (pair.token(pair.start_id), "good", "day")


def test_generation_and_its_views(loaded: tuple[Any, Any]) -> None:
    from blackbox_sal.seq2seq.explaining import explain_generation, generate

    pair, _ = loaded
    e = explain_generation(pair, SOURCE, generate_tokens=4)
    src = np.array(pair.tokenizer.encode(SOURCE).ids, np.int64)
    assert [pair.tokenizer.token_to_id(t) for t in e.output_tokens] == generate(pair, src, 4)
    assert not e.teacher_forced and len(e.source_scores[0]) == len(e.source_tokens) == 7
    doc = generation_json(e)
    assert json.loads(json.dumps(doc)) == doc
    assert doc["source_scores"] == [list(r) for r in e.source_scores] and doc["kind"] == "generation"
    text = generation_terminal(e, color=False)
    assert e.output_tokens[0] in text and "source" in text


def test_unknown_method_and_missing_target_are_usage_errors(loaded: tuple[Any, Any]) -> None:
    from blackbox_sal.seq2seq.explaining import explain_generation

    pair, _ = loaded
    with pytest.raises(UsageError, match="choose from grad-x-input"):
        explain_generation(pair, SOURCE, generate_tokens=2, method="occlusion")
    with pytest.raises(UsageError, match="one of them"):
        explain_generation(pair, SOURCE)


def test_a_folder_without_a_pair_is_a_model_error(tmp_path: Path) -> None:
    from blackbox_sal.model.encoder_decoder import load_pair

    with pytest.raises(ModelError, match="encoder_model.onnx"):
        load_pair(tmp_path)
    (tmp_path / "encoder_model.onnx").write_bytes(b"")
    with pytest.raises(ModelError, match="no decoder_model.onnx \\(nor decoder_model_merged.onnx\\)"):
        load_pair(tmp_path)


def test_a_merged_decoder_alone_generates_with_its_cache_branch_and_explains_its_other(
        exports: Path, kind: str, tmp_path: Path) -> None:
    """encoder_model.onnx and decoder_model_merged.onnx (optimum's If on use_cache_branch) alone:
    the no-cache branch, cut out, gives the explanation of the two decoders apart; the cache
    branch generates the same tokens and logits as the prefix rerun."""
    import dataclasses
    import shutil

    from blackbox_sal.model.encoder_decoder import load_pair
    from blackbox_sal.seq2seq.explaining import explain_generation, greedy

    full = exports / f"seq2seq-{kind}"
    for name in ("encoder_model.onnx", "decoder_model_merged.onnx", "tokenizer.json", "config.json"):
        shutil.copy(full / name, tmp_path / name)
    merged, apart = load_pair(tmp_path), load_pair(full)
    assert merged.past == apart.past and "use_cache_branch" in merged.with_past_inputs
    src = np.array(apart.tokenizer.encode(SOURCE).ids, np.int64)
    tokens, logits = greedy(dataclasses.replace(merged, eos_id=-1), src, 8)
    rerun, want = greedy(dataclasses.replace(apart, eos_id=-1), src, 8, use_past=False)
    assert tokens == rerun
    np.testing.assert_allclose(logits, want, rtol=0, atol=1e-4 * np.abs(want).max())
    a = explain_generation(merged, SOURCE, target_text="good day", method="grad-x-input")
    b = explain_generation(apart, SOURCE, target_text="good day", method="grad-x-input")
    np.testing.assert_allclose(a.source_scores, b.source_scores, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(a.prefix_scores, b.prefix_scores, rtol=1e-5, atol=1e-6)


GOLDEN = GenerationExplanation(
    model="m", method="grad-x-input", source_text="a b", output_text="x", source_tokens=("a", "b", "</s>"),
    prefix_tokens=("<pad>", "x"), output_tokens=("x", "</s>"), log_probs=(-0.5, -1.25),
    source_scores=((0.5, -0.25, 0.0), (0.125, 1.0, -2.0)), prefix_scores=((0.75, 0.0), (-0.5, 0.25)),
    teacher_forced=True)


def test_terminal_view_golden() -> None:
    assert generation_terminal(GOLDEN, color=False) == (
        "m (grad-x-input; teacher forced): 'a b' -> 'x'\n"
        "step  token  log p     | source: a      b      </s>   | output: <pad>  x     \n"
        "   0  x      -0.500    |         +0.50  -0.25  +0.00  |         +0.75        \n"
        "   1  </s>   -1.250    |         +0.12  +1.00  -2.00  |         -0.50  +0.25 \n")


def test_json_view_golden() -> None:
    assert generation_json(GOLDEN) == {
        "schema_version": 1, "kind": "generation", "model": "m", "method": "grad-x-input",
        "source_text": "a b", "output_text": "x", "teacher_forced": True,
        "source_tokens": ["a", "b", "</s>"], "prefix_tokens": ["<pad>", "x"], "output_tokens": ["x", "</s>"],
        "log_probs": [-0.5, -1.25], "source_scores": [[0.5, -0.25, 0.0], [0.125, 1.0, -2.0]],
        "prefix_scores": [[0.75, 0.0], [-0.5, 0.25]], "backend": "graph", "steps": None, "deltas": None}


@needs_torch
def test_the_cli_explains_a_generation(exports: Path) -> None:
    folder = exports / "seq2seq-t5"
    r = subprocess.run([sys.executable, "-m", "blackbox_sal", "explain", "--model", str(folder), "--generate", "3",
                        "--format", "json", SOURCE], capture_output=True, text=True, timeout=120,
                       env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["kind"] == "generation" and len(doc["output_tokens"]) <= 3
    assert len(doc["source_scores"][0]) == len(doc["source_tokens"])


@pytest.mark.parametrize("option", [["--richardson"], ["--fd-step", "0.001"]])
def test_a_pair_refuses_the_finite_difference_settings_it_does_not_use(exports: Path, option: list[str]) -> None:
    """a pair's finite differences have their own step: --richardson and --fd-step are refused, not ignored"""
    r = subprocess.run([sys.executable, "-m", "blackbox_sal", "explain", "--model", str(exports / "seq2seq-t5"),
                        "--generate", "2", "--backend", "fd", *option, SOURCE], capture_output=True, text=True,
                       timeout=120, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines() == [
        "blackbox-sal: error: encoder/decoder pairs take neither --richardson nor --fd-step: their finite "
        "differences use central differences with a step of 3e-3 of the embeddings' root mean square"]


def test_an_int8_pair_is_refused_or_explained_as_its_float_twin(exports: Path, tmp_path: Path) -> None:
    """quantize_dynamic's pair: refused without dequantize; its twin's chained gradient equals
    central differences of log p_t through the twin's own encoder and decoder runs."""
    import shutil

    from onnxruntime.quantization import QuantType, quantize_dynamic

    from blackbox_sal.model.encoder_decoder import load_pair
    from blackbox_sal.seq2seq.explaining import chained_gradients

    for name in ("tokenizer.json", "config.json"):
        shutil.copy(exports / "seq2seq-bart" / name, tmp_path / name)
    for name in ("encoder_model.onnx", "decoder_model.onnx"):
        quantize_dynamic(str(exports / "seq2seq-bart" / name), str(tmp_path / name), weight_type=QuantType.QInt8)
    with pytest.raises(ModelError, match="--dequantize"):
        load_pair(tmp_path)
    pair = load_pair(tmp_path, dequantize=True)
    assert "MatMulInteger" in pair.dequantized
    src = np.array(pair.tokenizer.encode(SOURCE).ids, np.int64)
    out = np.array(pair.tokenizer.encode("good day").ids, np.int64)
    prefix = np.array([pair.start_id, *out[:-1]], np.int64)
    x = pair.encoder_table[src].astype(np.float64)
    _, g, _ = chained_gradients(pair, x[None].astype(np.float32), src, prefix, out)
    direction = np.random.default_rng(0).normal(size=x.shape)
    mask = np.ones((1, len(src)), np.int64)

    def log_p(e: np.ndarray) -> np.ndarray:
        states = pair.encode(e[None], mask, src[None])
        logits = pair.logits(pair.decoder_table[prefix][None], prefix[None], states, mask)[0].astype(np.float64)
        logits -= logits.max(-1, keepdims=True)
        return np.asarray((logits - np.log(np.exp(logits).sum(-1, keepdims=True)))[np.arange(len(out)), out])

    h = 1e-2
    fd = (log_p(x + h * direction) - log_p(x - h * direction)) / (2 * h)
    np.testing.assert_allclose((g[0] * direction).sum((1, 2)), fd, rtol=2e-3, atol=2e-4)


def test_html_view_escapes_and_colours_each_cell() -> None:
    from dataclasses import replace

    from blackbox_sal.render.generation import generation_html

    page = generation_html(replace(GOLDEN, source_tokens=("<b>", "b", "</s>"), source_text="<b> b"))
    assert "<b> b" not in page and "&lt;b&gt; b" in page and "<th>&lt;b&gt;</th>" in page
    # the strongest source score (-2.00) is the full "against" colour; a blank cell above the diagonal
    assert '<td class="num" style="background:#b2182b;color:#ffffff" title="-2">-2.00</td>' in page
    assert "<td></td>" in page


def test_the_single_graph_form_equals_autograd_and_generates_as_pytorch(exports: Path) -> None:
    """model.onnx taking src and tgt_in (separate tables): its prefix found by its name, its
    source embeddings the "states" of an identity encoder."""
    import torch

    sys.path.insert(0, str(ROOT / "models"))
    from build_seq2seq import single_module

    from blackbox_sal.model.encoder_decoder import Pair, load_encoder_decoder
    from blackbox_sal.seq2seq.explaining import chained_gradients, generate

    folder = exports / "seq2seq-single"
    pair = load_encoder_decoder(folder)
    assert isinstance(pair, Pair)
    assert not pair.shared_table
    model = single_module(len(pair.encoder_table))
    model.load_state_dict(torch.load(folder / "torch_single.pt"))
    model.eval()
    src = np.array(pair.tokenizer.encode(SOURCE).ids, np.int64)
    ours = generate(pair, src, 6)
    prefix = torch.tensor([[pair.start_id]])
    with torch.no_grad():
        for _ in range(6):
            nxt = model(torch.from_numpy(src[None]), prefix)[0, -1].argmax()
            prefix = torch.cat([prefix, nxt.view(1, 1)], 1)
            if int(nxt) == pair.eos_id:
                break
    assert ours == prefix[0, 1:].tolist()
    out = np.array([10, 11, 12, pair.eos_id], np.int64)
    dec = np.array([pair.start_id, *out[:-1]], np.int64)
    _, g_source, g_prefix = chained_gradients(pair, pair.encoder_table[src][None], src, dec, out)
    xs = model.source(torch.from_numpy(src[None])).detach().requires_grad_(True)
    xp = model.target(torch.from_numpy(dec[None])).detach().requires_grad_(True)
    h = torch.tanh(model.enc(xs))
    q = torch.tanh(model.dec(torch.cumsum(xp, 1) / torch.arange(1, len(dec) + 1).view(1, -1, 1)))
    logits = model.out(torch.cat([q, torch.softmax(q @ h.transpose(1, 2), -1) @ h], -1))
    ref = torch.log_softmax(logits, -1)[0, torch.arange(len(out)), torch.from_numpy(out)]
    for t in range(len(out)):
        a, b = (v[0].numpy() for v in torch.autograd.grad(ref[t], (xs, xp), retain_graph=True))
        assert np.abs(g_source[0, t] - a).max() <= 1e-5 * np.abs(a).max()
        assert np.abs(g_prefix[0, t] - b).max() <= 1e-5 * np.abs(b).max()


def test_a_single_graph_without_a_recognisable_prefix_is_refused(exports: Path, tmp_path: Path) -> None:
    import shutil

    import onnx

    from blackbox_sal.model.encoder_decoder import load_single

    for name in ("tokenizer.json", "config.json"):
        shutil.copy(exports / "seq2seq-single" / name, tmp_path / name)
    proto = onnx.load(str(exports / "seq2seq-single" / "model.onnx"))
    for node in proto.graph.node:
        node.input[:] = ["b" if i == "tgt_in" else i for i in node.input]
    proto.graph.input[1].name = "b"
    onnx.save(proto, str(tmp_path / "model.onnx"))
    with pytest.raises(ModelError, match='"inputs": {"source": ..., "prefix": ...}'):
        load_single(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"decoder_start_token_id": 0, "eos_token_id": 1,
                                                      "inputs": {"source": "src", "prefix": "b"}}))
    assert load_single(tmp_path).decoder_table.shape == load_single(exports / "seq2seq-single").decoder_table.shape


@pytest.mark.parametrize("name", ["seq2seq-t5", "seq2seq-bart", "seq2seq-single"])
def test_finite_differences_equal_the_gradient_graphs(exports: Path, name: str) -> None:
    from blackbox_sal.model.encoder_decoder import Pair, load_encoder_decoder
    from blackbox_sal.seq2seq.explaining import chained_gradients, fd_gradients

    pair = load_encoder_decoder(exports / name)
    assert isinstance(pair, Pair)
    src = np.array(pair.tokenizer.encode(SOURCE).ids, np.int64)
    out = np.array([10, 11, pair.eos_id], np.int64)
    prefix = np.array([pair.start_id, 10, 11], np.int64)
    x = pair.encoder_table[src][None].astype(np.float32)
    exact, fd = chained_gradients(pair, x, src, prefix, out), fd_gradients(pair, x, src, prefix, out)
    np.testing.assert_allclose(fd[0], exact[0], rtol=1e-6, atol=1e-6)
    for a, b in zip(exact[1:], fd[1:], strict=True):
        assert np.abs(a - b).max() <= 2e-3 * np.abs(a).max()  # float32 runs: measured 1.4e-4 to 1.2e-3


def test_a_recurrent_single_graph_is_explained_by_finite_differences(exports: Path) -> None:
    """GRU layers have no reverse rule: auto falls back to central differences, which equal
    autograd through the PyTorch GRU; --backend graph is refused in one line."""
    import torch

    sys.path.insert(0, str(ROOT / "models"))
    from build_seq2seq import gru_module

    from blackbox_sal.model.encoder_decoder import load_encoder_decoder
    from blackbox_sal.seq2seq.explaining import explain_generation, fd_gradients

    folder = exports / "seq2seq-gru"
    pair = load_encoder_decoder(folder)
    assert pair.decoder_grad is None and pair.no_graph is not None and "'GRU'" in pair.no_graph
    with pytest.raises(UsageError, match="no gradient graph"):
        explain_generation(pair, SOURCE, generate_tokens=2, backend="graph")
    e = explain_generation(pair, SOURCE, target_text="good day", method="grad-x-input")
    assert e.backend == "fd" and "finite differences" in generation_terminal(e).splitlines()[0]
    model = gru_module(len(pair.encoder_table))
    model.load_state_dict(torch.load(folder / "torch_single.pt"))
    model.eval()
    src = np.array(pair.tokenizer.encode(SOURCE).ids, np.int64)
    out = np.array(pair.tokenizer.encode("good day").ids, np.int64)
    dec = np.array([pair.start_id, *out[:-1]], np.int64)
    _, g_source, g_prefix = fd_gradients(pair, pair.encoder_table[src][None], src, dec, out)
    xs = model.source(torch.from_numpy(src[None])).detach().requires_grad_(True)
    xp = model.target(torch.from_numpy(dec[None])).detach().requires_grad_(True)
    ref = torch.log_softmax(model.run(xs, xp), -1)[0, torch.arange(len(out)), torch.from_numpy(out)]
    np.testing.assert_allclose(e.log_probs, ref.detach().numpy(), rtol=1e-5)
    for t in range(len(out)):
        a, b = (v[0].numpy() for v in torch.autograd.grad(ref[t], (xs, xp), retain_graph=True))
        assert np.abs(g_source[0, t] - a).max() <= 2e-3 * np.abs(a).max()
        assert np.abs(g_prefix[0, t] - b).max() <= 2e-3 * np.abs(b).max()
        np.testing.assert_allclose(e.source_scores[t], (g_source[0, t] * xs[0].detach().numpy()).sum(-1), rtol=1e-5,
                                   atol=1e-7)


@needs_torch
def test_batch_writes_one_record_per_row_with_its_matrices(exports: Path, tmp_path: Path) -> None:
    """Rows with a target are teacher forced, the others generated; a bad row fails alone."""
    from blackbox_sal.model.encoder_decoder import load_pair
    from blackbox_sal.seq2seq.explaining import explain_generation

    data = tmp_path / "rows.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in (
        {"text": SOURCE, "target": "good day"}, {"text": "hello world"}, {"text": ""})) + "\n")
    out = tmp_path / "out.jsonl"
    r = subprocess.run([sys.executable, "-m", "blackbox_sal", "batch", "--model", str(exports / "seq2seq-bart"),
                        str(data), "--output", str(out), "--generate", "2", "--target-column", "target",
                        "--method", "grad-x-input"], capture_output=True, text=True, timeout=120,
                       env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr
    assert "3 rows: 2 explained, 1 failed" in r.stderr
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [rec["row"] for rec in records] == [0, 1, 2]
    pair = load_pair(exports / "seq2seq-bart")
    forced = explain_generation(pair, SOURCE, target_text="good day", method="grad-x-input")
    assert records[0]["teacher_forced"] and records[0]["source_scores"] == [list(x) for x in forced.source_scores]
    assert not records[1]["teacher_forced"] and len(records[1]["output_tokens"]) <= 2
    assert records[2]["exit_code"] == 2 and "error" in records[2]


@needs_torch
def test_the_package_api_equals_the_clis_json(exports: Path) -> None:
    """``blackbox_sal.load_encoder_decoder`` + ``explain_seq2seq`` give, through the JSON view,
    the very document the CLI prints for the same settings (generated and teacher-forced)."""
    import blackbox_sal as bs

    folder = exports / "seq2seq-t5"
    pair = bs.load_encoder_decoder(folder)
    for flags, target in ((["--generate", "3"], None), (["--target-text", "a cat"], "a cat")):
        r = subprocess.run([sys.executable, "-m", "blackbox_sal", "explain", "--model", str(folder), *flags,
                            "--method", "ig", "--steps", "8", "--format", "json", SOURCE], capture_output=True,
                           text=True, timeout=120, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
        assert r.returncode == 0, r.stderr
        result = bs.explain_seq2seq(pair, SOURCE, generate_tokens=None if target else 3, target_text=target,
                                    method="ig", steps=8)
        assert isinstance(result, bs.GenerationExplanation)
        assert json.loads(json.dumps(generation_json(result))) == json.loads(r.stdout)
        assert result.teacher_forced is (target is not None) and result.steps == 8


@needs_torch
def test_the_server_answers_as_the_package_api(exports: Path) -> None:
    """KServe V1 on an encoder/decoder pair: ``:explain`` gives per instance the API result's
    JSON view (teacher-forced with target_text, generated without), ``:predict`` the greedy
    output text; a bad instance is a 400 with one line."""
    pytest.importorskip("starlette")
    from starlette.testclient import TestClient

    import blackbox_sal as bs
    from blackbox_sal.server.app import PAIR_GENERATE, Server

    pair = bs.load_encoder_decoder(exports / "seq2seq-t5")
    client = TestClient(Server({}, bs.ExplainConfig(method="ig", steps=8), pairs={"t5": pair}).app)
    r = client.post("/v1/models/t5:explain", json={"instances": [{"text": SOURCE, "target_text": "a cat"},
                                                                  {"text": SOURCE, "id": "g"}]})
    assert r.status_code == 200, r.text
    forced, generated = r.json()["explanations"]
    assert forced == json.loads(json.dumps(generation_json(bs.explain_seq2seq(
        pair, SOURCE, target_text="a cat", method="ig", steps=8))))
    expected = bs.explain_seq2seq(pair, SOURCE, generate_tokens=PAIR_GENERATE, method="ig", steps=8)
    assert generated == {"id": "g", **json.loads(json.dumps(generation_json(expected)))}
    r = client.post("/v1/models/t5:predict", json={"instances": [SOURCE]})
    assert r.status_code == 200, r.text
    assert r.json() == {"predictions": [{"text": expected.output_text}]}
    for bad in ({"text": SOURCE, "target": 1}, {"text": ""}, {"text": SOURCE, "target_text": 3}):
        r = client.post("/v1/models/t5:explain", json={"instances": [bad]})
        assert r.status_code == 400 and "\n" not in r.json()["error"], r.text
    r = client.post("/v1/models/t5:predict", json={"instances": [{"text": SOURCE, "target_text": "a"}]})
    assert r.status_code == 400 and "target_text" in r.json()["error"]
    r = client.post("/v1/models/t5:explain", json={"instances": [SOURCE], "parameters": {"method": "lime"}})
    assert r.status_code == 400 and "\n" not in r.json()["error"], r.text
    assert client.get("/v1/models/t5").json() == {"name": "t5", "ready": True}
    assert client.get("/v1/models").json() == {"models": ["t5"]}
    # KServe V2: NAME generates, NAME-explainer explains the generation (the same objects as V1)
    tensor = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [2], "data": [SOURCE, SOURCE]}]}
    r = client.post("/v2/models/t5/infer", json=tensor)
    assert r.status_code == 200, r.text
    assert r.json() == {"model_name": "t5", "model_version": "1", "outputs": [
        {"name": "text", "datatype": "BYTES", "shape": [2], "data": [expected.output_text] * 2}]}
    r = client.post("/v2/models/t5-explainer/infer", json={**tensor, "id": "q"})
    assert r.status_code == 200, r.text
    (out,) = r.json()["outputs"]
    assert r.json()["id"] == "q" and out["name"] == "explanation" and out["shape"] == [2]
    assert [json.loads(d) for d in out["data"]] == [json.loads(json.dumps(generation_json(expected)))] * 2
    meta = client.get("/v2/models/t5-explainer").json()
    assert meta["outputs"] == [{"name": "explanation", "datatype": "BYTES", "shape": [-1]}] and meta["explains"] == "t5"
    assert client.get("/v2/models/t5/ready").json() == {"name": "t5", "ready": True}
    r = client.post("/v2/models/t5/infer", json={"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1],
                                                                 "data": [""]}]})
    assert r.status_code == 400 and "\n" not in r.json()["error"], r.text


def test_points_sharing_runs_equal_each_point_alone_and_the_encoder_runs_once_per_point(
        loaded: tuple[Any, Any]) -> None:
    """Rows of different points in one run (batch_size 10: two points' 5 steps each), and one
    point's rows over two runs (batch_size 3), give each point's gradients as a run of that
    point alone; the encoder's forward runs on one row per point (its backward half reads the
    saved tensors), and the source's run is shared by generation and the explanation's point at
    the source."""
    from blackbox_sal.seq2seq.explaining import chained_gradients, explain_generation

    pair, _ = loaded
    src = np.array(pair.tokenizer.encode(SOURCE).ids, np.int64)
    out = np.array([10, 11, 12, 13, pair.eos_id], np.int64)
    prefix = np.array([pair.start_id, *out[:-1]], np.int64)
    x = pair.encoder_table[src].astype(np.float32)
    points = np.stack([x, 0.5 * x, 0.2 * x + 0.1])
    for batch_size in (10, 3):
        together = chained_gradients(pair, points, src, prefix, out, batch_size=batch_size)
        for p in range(3):
            alone = chained_gradients(pair, points[p:p + 1], src, prefix, out, batch_size=64)
            for a, b in zip(together, alone, strict=True):
                np.testing.assert_allclose(a[p], b[0], rtol=1e-5, atol=1e-6)
    rows: dict[str, int] = {}

    def counting(name: str) -> Any:
        method = getattr(pair, name)

        def counted(*args: Any) -> Any:
            rows[name] = rows.get(name, 0) + len(args[0])
            return method(*args)
        return counted

    for name in ("encode", "encode_saving", "encoder_vjp"):
        object.__setattr__(pair, name, counting(name))
    try:
        e = explain_generation(pair, SOURCE, generate_tokens=3, method="ig", steps=4)
    finally:
        for name in ("encode", "encode_saving", "encoder_vjp"):
            object.__delattr__(pair, name)
    # 6 points (4 nodes, the baseline, the source): 5 encoded here, the source's once for all
    assert rows == {"encode_saving": 1 + 5, "encoder_vjp": 6 * len(e.output_tokens)}


def test_generation_with_past_key_values_equals_rerunning_the_prefix(loaded: tuple[Any, Any]) -> None:
    """decoder_with_past_model.onnx (one new token per step after the cached keys and values)
    gives the tokens and logits of the decoder rerun on the whole prefix, over 10 steps (past
    the length the export traced; the end token disabled so that each source runs them all)."""
    import dataclasses

    from blackbox_sal.seq2seq.explaining import greedy

    pair, _ = loaded
    assert pair.with_past is not None and len(pair.past) == 8  # 2 layers x decoder/encoder x key/value
    endless = dataclasses.replace(pair, eos_id=-1)
    calls = []
    step = endless.next_step

    def counted(*args: Any) -> Any:
        calls.append(args[0].shape)
        return step(*args)

    object.__setattr__(endless, "next_step", counted)
    for text in (SOURCE, "hello world", "a big red bird sings loud today and the sun is good"):
        src = np.array(pair.tokenizer.encode(text).ids, np.int64)
        cached, with_past = greedy(endless, src, 10, use_past=True)
        rerun, without = greedy(endless, src, 10, use_past=False)
        assert cached == rerun and len(cached) == 10
        np.testing.assert_allclose(with_past, without, rtol=0, atol=1e-4 * np.abs(without).max())
    assert calls == [(1, 1)] * 27  # 9 steps after the first, one new token each, per source


def test_a_pair_without_the_past_decoder_generates_by_rerunning(exports: Path, kind: str, tmp_path: Path) -> None:
    import shutil

    from blackbox_sal.model.encoder_decoder import load_pair
    from blackbox_sal.seq2seq.explaining import generate

    folder = tmp_path / "pair"
    shutil.copytree(exports / f"seq2seq-{kind}", folder, ignore=shutil.ignore_patterns("torch_model"))
    (folder / "decoder_with_past_model.onnx").unlink()
    (folder / "decoder_model_merged.onnx").unlink()
    pair, with_past = load_pair(folder), load_pair(exports / f"seq2seq-{kind}")
    assert pair.with_past is None and with_past.with_past is not None
    src = np.array(pair.tokenizer.encode(SOURCE).ids, np.int64)
    assert generate(pair, src, 8) == generate(with_past, src, 8)


def _quantized_gru(exports: Path, tmp_path: Path, ops: list[str], transposed_first: bool = False) -> Path:
    """seq2seq-gru through onnxruntime's quantize_dynamic (``ops``): its 8-bit lookups are
    ``Gather(Wq, ids) -> DequantizeLinear``; ``transposed_first`` moves the Transpose after each
    between the two (int8 values transposed, then dequantized: pyfrspell's form)."""
    import shutil

    import onnx
    from onnx import helper
    from onnxruntime.quantization import QuantType, quantize_dynamic

    folder = tmp_path / ("int8-" + "-".join(ops) + ("-t" if transposed_first else ""))
    shutil.copytree(exports / "seq2seq-gru", folder)
    quantize_dynamic(str(exports / "seq2seq-gru" / "model.onnx"), str(folder / "model.onnx"),
                     op_types_to_quantize=ops, weight_type=QuantType.QInt8)
    if transposed_first:
        m = onnx.load(str(folder / "model.onnx"))
        nodes = list(m.graph.node)
        for d in [n for n in nodes if n.op_type == "DequantizeLinear"]:
            t = next(n for n in nodes if n.op_type == "Transpose" and n.input[0] == d.output[0])
            q = t.output[0] + "_quantized"
            moved = [helper.make_node("Transpose", [d.input[0]], [q], perm=t.attribute[0].ints),
                     helper.make_node("DequantizeLinear", [q, *d.input[1:]], [t.output[0]])]
            at = nodes.index(t)
            nodes[at:at + 1] = moved
        del m.graph.node[:]
        m.graph.node.extend(nodes)
        onnx.save(m, str(folder / "model.onnx"))
    return folder


@pytest.mark.parametrize("transposed_first", [False, True])
def test_an_8bit_lookup_dequantized_after_the_gather_is_split_as_its_float_table(
        exports: Path, tmp_path: Path, transposed_first: bool) -> None:
    """Only the lookups quantized: the float twin is the int8 graph's function exactly (the
    dequantization moved into the table), the split finds the tables (Wq - z) s, and finite
    differences through the twin equal autograd through the PyTorch GRU on those tables."""
    import onnx
    import onnxruntime as ort
    import torch
    from onnx import numpy_helper

    sys.path.insert(0, str(ROOT / "models"))
    from build_seq2seq import gru_module

    from blackbox_sal.model.encoder_decoder import load_encoder_decoder
    from blackbox_sal.seq2seq.explaining import fd_gradients
    from blackbox_sal.surgery.dequantize import float_twin

    folder = _quantized_gru(exports, tmp_path, ["Gather"], transposed_first)
    proto = onnx.load(str(folder / "model.onnx"))
    twin, _ = float_twin(proto)
    assert "DequantizeLinear" not in {n.op_type for n in twin.graph.node}
    feeds = {"src": np.array([[5, 6, 7, 1]]), "tgt_in": np.array([[0, 9, 10, 11]])}
    int8, floated = (ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, feeds)[0] for m in (proto, twin))
    np.testing.assert_allclose(floated, int8, rtol=0, atol=1e-6 * np.abs(int8).max())
    pair = load_encoder_decoder(folder)  # no quantized operator: the lookups' values are exact
    inits = {t.name: numpy_helper.to_array(t).astype(np.float32) for t in proto.graph.initializer}
    for table, name in ((pair.encoder_table, "source"), (pair.decoder_table, "target")):
        want = (inits[f"{name}.weight_quantized"] - inits[f"{name}.weight_zero_point"]) * inits[f"{name}.weight_scale"]
        np.testing.assert_allclose(table, want, rtol=1e-6, atol=1e-7)
    model = gru_module(len(pair.encoder_table))
    model.load_state_dict(torch.load(folder / "torch_single.pt"))
    model.eval()
    src = np.array(pair.tokenizer.encode(SOURCE).ids, np.int64)
    out = np.array(pair.tokenizer.encode("good day").ids, np.int64)
    dec = np.array([pair.start_id, *out[:-1]], np.int64)
    _, g_source, g_prefix = fd_gradients(pair, pair.encoder_table[src][None], src, dec, out)
    xs = torch.from_numpy(pair.encoder_table[src][None].copy()).requires_grad_(True)
    xp = torch.from_numpy(pair.decoder_table[dec][None].copy()).requires_grad_(True)
    ref = torch.log_softmax(model.run(xs, xp), -1)[0, torch.arange(len(out)), torch.from_numpy(out)]
    for t in range(len(out)):
        a, b = (v[0].numpy() for v in torch.autograd.grad(ref[t], (xs, xp), retain_graph=True))
        assert np.abs(g_source[0, t] - a).max() <= 2e-3 * np.abs(a).max()
        assert np.abs(g_prefix[0, t] - b).max() <= 2e-3 * np.abs(b).max()


def test_an_int8_single_graph_is_refused_as_shipped_and_explained_as_its_float_twin(
        exports: Path, tmp_path: Path) -> None:
    """quantize_dynamic on lookups and matrix products (DynamicQuantizeLinear, MatMulInteger):
    refused without --dequantize in one line; with it, the twin (GRU: finite differences)
    explains, every source token of the last step scored."""
    from blackbox_sal.model.encoder_decoder import load_encoder_decoder
    from blackbox_sal.seq2seq.explaining import explain_generation

    folder = _quantized_gru(exports, tmp_path, ["Gather", "MatMul"])
    with pytest.raises(ModelError, match=r"the single graph is quantized \(DynamicQuantizeLinear, MatMulInteger\)"
                                         r".*pass --dequantize"):
        load_encoder_decoder(folder)
    pair = load_encoder_decoder(folder, dequantize=True)
    assert pair.dequantized == ("DynamicQuantizeLinear", "MatMulInteger")
    e = explain_generation(pair, SOURCE, target_text="good day", method="grad-x-input")
    assert e.backend == "fd" and all(abs(v) > 0 for v in e.source_scores[-1])


def test_a_pair_request_beyond_the_queue_is_429_and_one_past_its_deadline_504(exports: Path) -> None:
    """The pair's instances are admitted as the engine admits works: with max_active 1 and
    queue 1 held by two blocked instances, a request is refused with 429 (Retry-After) and
    runs nothing; freed, the same request is answered. A deadline shorter than the work stops
    its runs: 504 in one line."""
    import threading
    import time

    pytest.importorskip("starlette")
    from starlette.testclient import TestClient

    import blackbox_sal as bs
    from blackbox_sal.server.app import Server
    from blackbox_sal.vocabulary.config import Limits

    pair = bs.load_encoder_decoder(exports / "seq2seq-t5")
    server = Server({}, bs.ExplainConfig(method="ig", steps=8), Limits(max_active=1, queue_size=1),
                    pairs={"t5": pair})
    client = TestClient(server.app)
    service = server.pair_services["t5"]
    release = threading.Event()
    held = service.submit_all([release.wait, release.wait], deadline=time.monotonic() + 30)
    body = {"instances": [SOURCE]}
    r = client.post("/v1/models/t5:explain", json=body)
    assert r.status_code == 429 and r.headers["retry-after"] == "1", r.text
    assert r.json()["error"] == "the server is busy: its queue is full"
    release.set()
    for f in held:
        f.result(timeout=10)
    r = client.post("/v1/models/t5:explain", json=body)
    assert r.status_code == 200 and r.json()["explanations"][0]["output_text"], r.text
    r = client.post("/v1/models/t5:explain", json={"instances": [SOURCE], "parameters": {
        "deadline": 0.001, "method": "ig", "steps": 1024}})
    assert r.status_code == 504 and r.json()["error"] == "the request's deadline passed; its work was stopped"
    assert service.load == 0 and service.health() is None
    server.stop()
    assert service.health() == "it is stopped"


def test_the_openapi_document_describes_the_pair_routes_and_their_answers_validate(exports: Path) -> None:
    pytest.importorskip("starlette")
    jsonschema = pytest.importorskip("jsonschema")
    from starlette.testclient import TestClient

    import blackbox_sal as bs
    from blackbox_sal.server.app import Server

    pair = bs.load_encoder_decoder(exports / "seq2seq-bart")
    client = TestClient(Server({}, bs.ExplainConfig(method="grad-x-input"), pairs={"bart": pair}).app)
    doc = client.get("/openapi.json").json()
    for path in ("/v1/models/bart:predict", "/v1/models/bart:explain", "/v2/models/bart/infer",
                 "/v2/models/bart-explainer/infer"):
        assert path in doc["paths"], path
    assert "bart-explainer" in doc["paths"]["/v2/models/{name}"]["get"]["parameters"][0]["schema"]["enum"]

    def valid(body: Any, schema: str) -> None:
        jsonschema.validate(body, {**doc, "$ref": f"#/components/schemas/{schema}"},
                            cls=jsonschema.Draft202012Validator)

    request = {"instances": [SOURCE, {"text": SOURCE, "target_text": "good day", "id": 7}]}
    valid(request, "PairInstances")
    r = client.post("/v1/models/bart:explain", json=request)
    assert r.status_code == 200, r.text
    valid(r.json(), "Generations")
    r = client.post("/v1/models/bart:predict", json={"instances": [SOURCE]})
    valid(r.json(), "Generated")
    with pytest.raises(jsonschema.ValidationError):
        valid({"predictions": [{"label": "x"}]}, "Generated")
