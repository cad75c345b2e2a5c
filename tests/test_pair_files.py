"""Two ONNX files with a stepping decoder (blackbox_sal.model.pair_files): a tiny synthetic
pair of arabic-name-romanizer's interface (src + bool padding mask -> memory_out,
src_mask_out, hidden_out; prefix + memory + src_mask + hidden -> next-token logprobs and
hidden_out, the decoder looking up only the last prefix position) built with onnx.helper.

Greedy output equals the two files run by hand with the hidden state fed back; each step's
scores equal finite differences of the ORIGINAL files with one embedding row moved along
itself; the refusals name the config form. The real package (heavy, skipped without its
wheel): greedy output equals the package's own beam search at width 1, run by hand.
"""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from blackbox_sal.model.encoder_decoder import load_encoder_decoder
from blackbox_sal.model.pair_files import FilePair, load_file_pair
from blackbox_sal.seq2seq.explaining import explain_generation
from blackbox_sal.vocabulary.errors import ModelError, UsageError

ROOT = Path(__file__).resolve().parents[1]
TOKENS = ["<PAD>", "<BOS>", "<EOS>", "<UNK>", "a", "b", "c", "d", "e", "f", "g", "h"]
V, D = len(TOKENS), 8
CONFIG: dict[str, Any] = {
    "decoder_start_token_id": 1, "eos_token_id": 2, "pad_token_id": 0,
    "encoder_decoder": {"encoder": "encoder.onnx", "decoder": "decoder.onnx", "padding_mask": "src_mask",
                        "prefix": "prefix", "logits": "logprobs",
                        "feeds": {"memory": "memory_out", "src_mask": "src_mask_out", "hidden": "hidden_out"},
                        "state": {"hidden": "hidden_out"}}}


def _init(name: str, value: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value), name)


def _encoder(rng: np.random.Generator) -> onnx.ModelProto:
    """memory = tanh(E[src] W1); hidden = tanh(mean over unpadded positions of memory, W2)."""
    f, b = TensorProto.FLOAT, TensorProto.BOOL
    nodes = [
        helper.make_node("Gather", ["E_src", "src"], ["emb"]),
        helper.make_node("MatMul", ["emb", "W1"], ["pre"]),
        helper.make_node("Tanh", ["pre"], ["memory_out"]),
        helper.make_node("Identity", ["src_mask"], ["src_mask_out"]),
        helper.make_node("Not", ["src_mask"], ["keep_b"]),
        helper.make_node("Cast", ["keep_b"], ["keep"], to=f),
        helper.make_node("Unsqueeze", ["keep", "ax2"], ["keep3"]),
        helper.make_node("Mul", ["memory_out", "keep3"], ["kept"]),
        helper.make_node("ReduceSum", ["kept", "ax1"], ["total"], keepdims=0),
        helper.make_node("ReduceSum", ["keep", "ax1"], ["count"], keepdims=1),
        helper.make_node("Div", ["total", "count"], ["mean"]),
        helper.make_node("MatMul", ["mean", "W2"], ["h_pre"]),
        helper.make_node("Tanh", ["h_pre"], ["h"]),
        helper.make_node("Unsqueeze", ["h", "ax1"], ["hidden_out"]),
    ]
    graph = helper.make_graph(
        nodes, "encoder",
        [helper.make_tensor_value_info("src", TensorProto.INT64, ["batch", "src_len"]),
         helper.make_tensor_value_info("src_mask", b, ["batch", "src_len"])],
        [helper.make_tensor_value_info("memory_out", f, ["batch", "src_len", D]),
         helper.make_tensor_value_info("src_mask_out", b, ["batch", "src_len"]),
         helper.make_tensor_value_info("hidden_out", f, ["batch", 1, D])],
        [_init("E_src", rng.normal(0, 1, (V, D)).astype(np.float32)),
         _init("W1", rng.normal(0, 0.5, (D, D)).astype(np.float32)),
         _init("W2", rng.normal(0, 0.5, (D, D)).astype(np.float32)),
         _init("ax1", np.array([1], np.int64)), _init("ax2", np.array([2], np.int64))])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _decoder(rng: np.random.Generator) -> onnx.ModelProto:
    """A recurrent cell on the last prefix token's embedding and the hidden state, attention
    over the memory (padding masked out), log-softmax of the next token."""
    f, b = TensorProto.FLOAT, TensorProto.BOOL
    nodes = [
        helper.make_node("Gather", ["prefix", "last"], ["last_id"], axis=1),
        helper.make_node("Gather", ["E_dec", "last_id"], ["e"]),
        helper.make_node("Squeeze", ["hidden", "ax1"], ["h"]),
        helper.make_node("MatMul", ["e", "A"], ["ea"]),
        helper.make_node("MatMul", ["h", "Bm"], ["hb"]),
        helper.make_node("Add", ["ea", "hb"], ["cell"]),
        helper.make_node("Tanh", ["cell"], ["h_new"]),
        helper.make_node("Unsqueeze", ["h_new", "ax1"], ["hidden_out"]),
        helper.make_node("Mul", ["memory", "hidden_out"], ["prod"]),
        helper.make_node("ReduceSum", ["prod", "ax2"], ["scores"], keepdims=0),
        helper.make_node("Where", ["src_mask", "minus", "scores"], ["masked"]),
        helper.make_node("Softmax", ["masked"], ["att"], axis=1),
        helper.make_node("Unsqueeze", ["att", "ax2"], ["att3"]),
        helper.make_node("Mul", ["att3", "memory"], ["weighted"]),
        helper.make_node("ReduceSum", ["weighted", "ax1"], ["ctx"], keepdims=0),
        helper.make_node("Add", ["h_new", "ctx"], ["both"]),
        helper.make_node("MatMul", ["both", "O"], ["logits"]),
        helper.make_node("LogSoftmax", ["logits"], ["logprobs"], axis=-1),
    ]
    graph = helper.make_graph(
        nodes, "decoder",
        [helper.make_tensor_value_info("prefix", TensorProto.INT64, ["batch", "tgt_len"]),
         helper.make_tensor_value_info("memory", f, ["batch", "src_len", D]),
         helper.make_tensor_value_info("src_mask", b, ["batch", "src_len"]),
         helper.make_tensor_value_info("hidden", f, ["batch", 1, D])],
        [helper.make_tensor_value_info("logprobs", f, ["batch", V]),
         helper.make_tensor_value_info("hidden_out", f, ["batch", 1, D])],
        [_init("E_dec", rng.normal(0, 1, (V, D)).astype(np.float32)),
         _init("A", rng.normal(0, 0.7, (D, D)).astype(np.float32)),
         _init("Bm", rng.normal(0, 0.7, (D, D)).astype(np.float32)),
         _init("O", rng.normal(0, 1.5, (D, V)).astype(np.float32)),
         _init("last", np.array(-1, np.int64)), _init("minus", np.array(-1e4, np.float32)),
         _init("ax1", np.array([1], np.int64)), _init("ax2", np.array([2], np.int64))])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _folder(path: Path, config: dict[str, Any] | None = CONFIG) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(3)
    onnx.save(_encoder(rng), str(path / "encoder.onnx"))
    onnx.save(_decoder(rng), str(path / "decoder.onnx"))
    (path / "vocab.json").write_text(json.dumps({"tokens": TOKENS}))
    if config is not None:
        (path / "config.json").write_text(json.dumps(config))
    return path


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _folder(tmp_path_factory.mktemp("pair") / "tiny")


def _by_hand(encoder: onnx.ModelProto, decoder: onnx.ModelProto, src: list[int], targets: list[int] | None,
             steps: int = 12) -> tuple[list[int], list[np.ndarray]]:
    """The two files run as the package runs them: the encoder once, then the decoder on the
    growing prefix with hidden fed back; greedy (``targets`` None) or teacher-forced."""
    enc = ort.InferenceSession(encoder.SerializeToString())
    dec = ort.InferenceSession(decoder.SerializeToString())
    ids = np.array([src], np.int64)
    memory, mask, hidden = enc.run(None, {"src": ids, "src_mask": np.zeros(ids.shape, bool)})
    out: list[int] = []
    scores: list[np.ndarray] = []
    for t in range(steps if targets is None else len(targets)):
        logprobs, hidden = dec.run(None, {"prefix": np.array([[1, *out]], np.int64), "memory": memory,
                                          "src_mask": mask, "hidden": hidden})
        scores.append(logprobs[0].astype(np.float64))
        out.append(int(np.argmax(logprobs[0])) if targets is None else targets[t])
        if targets is None and out[-1] == 2:
            break
    return out, scores


def test_greedy_equals_the_two_files_run_by_hand(folder: Path) -> None:
    pair = load_encoder_decoder(folder)
    assert isinstance(pair, FilePair) and pair.state == (("hidden", "hidden_out"),)
    for text in ("abc", "hedge", "gab"):
        src = [TOKENS.index(c) for c in text] + [2]
        want, scores = _by_hand(onnx.load(str(folder / "encoder.onnx")), onnx.load(str(folder / "decoder.onnx")),
                                src, None)
        got, logits = pair.greedy(np.array(src), 12)
        assert got == want
        np.testing.assert_allclose(logits, np.stack(scores), atol=1e-5)
        assert len(set(got)) > 1  # the state moves the output: not one token repeated


def test_the_state_is_fed_back(folder: Path) -> None:
    """Teacher-forced log p_t equals the hand run with hidden fed back, and differs from one
    that feeds the encoder's hidden every step (so threading is what is tested)."""
    pair = load_file_pair(folder)
    src = np.array([4, 5, 6, 2])
    targets = [5, 7, 9, 4, 2]
    _, scores = _by_hand(onnx.load(str(folder / "encoder.onnx")), onnx.load(str(folder / "decoder.onnx")),
                         src.tolist(), targets)
    prefix = np.array([1, *targets[:-1]])
    lp = pair.log_probs(pair.encoder_table[src][None], src[None], pair.decoder_table[prefix][None], prefix[None])
    np.testing.assert_allclose(lp[0], np.stack(scores), atol=1e-5)
    stale = FilePair(**{**pair.__dict__, "state": ()})
    assert np.abs(stale.log_probs(pair.encoder_table[src][None], src[None], pair.decoder_table[prefix][None],
                                  prefix[None]) - lp).max() > 1e-2


def _moved(model: onnx.ModelProto, table: str, row: int, eps: float) -> onnx.ModelProto:
    """``model`` with table row ``row`` scaled by (1 + eps): d/d eps at 0 is g . E[row]."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for k, init in enumerate(out.graph.initializer):
        if init.name == table:
            value = numpy_helper.to_array(init).copy()
            value[row] *= 1 + eps
            out.graph.initializer[k].CopyFrom(numpy_helper.from_array(value, table))
    return out


def test_scores_equal_finite_differences_of_the_original_files(folder: Path) -> None:
    """grad x input for a token that occurs once = d/d eps log p_t with its embedding row
    scaled by (1 + eps) in the file itself (the encoder's table for the source, the decoder's
    for the prefix), by central differences on the two original files."""
    encoder, decoder = onnx.load(str(folder / "encoder.onnx")), onnx.load(str(folder / "decoder.onnx"))
    pair = load_file_pair(folder)
    result = explain_generation(pair, "hedgac", generate_tokens=8, method="grad-x-input")
    assert result.backend == "fd" and not result.teacher_forced
    src = [TOKENS.index(c) for c in "hedgac"] + [2]
    outputs = [TOKENS.index(t) for t in result.output_tokens]
    assert outputs == pair.greedy(np.array(src), 8)[0]
    _, base = _by_hand(encoder, decoder, src, outputs)
    np.testing.assert_allclose(result.log_probs, [s[o] for s, o in zip(base, outputs, strict=True)], atol=1e-5)
    eps = 1e-3

    def fd(enc: Any, dec: Any) -> np.ndarray:
        up = _by_hand(enc(eps), dec(eps), src, outputs)[1]
        down = _by_hand(enc(-eps), dec(-eps), src, outputs)[1]
        return np.array([(u[o] - d[o]) / (2 * eps) for u, d, o in zip(up, down, outputs, strict=True)])

    for position, token in enumerate(src):
        want = fd(lambda e, t=token: _moved(encoder, "E_src", t, e), lambda e: decoder)
        got = [row[position] for row in result.source_scores]
        np.testing.assert_allclose(got, want, atol=2e-3, rtol=2e-2)
    prefix = [1, *outputs[:-1]]
    checked = 0
    for position, token in enumerate(prefix):
        if prefix.count(token) != 1:
            continue
        want = fd(lambda e: encoder, lambda e, t=token: _moved(decoder, "E_dec", t, e))
        got = [row[position] for row in result.prefix_scores]
        np.testing.assert_allclose(got, want, atol=2e-3, rtol=2e-2)
        assert np.abs(want[position:]).max() > 1e-3  # the prefix token matters to its own and later steps
        checked += 1
    assert checked >= 2
    assert np.abs(result.source_scores).max() > 1e-2


def test_integrated_gradients_complete(folder: Path) -> None:
    """Completeness through finite differences: sum IG_t = log p_t(x) - log p_t(pad) to 1e-3
    where those differences reach several nats (48 Gauss-Legendre points; 16 leave 2e-2)."""
    result = explain_generation(load_file_pair(folder), "bad", target_text="cafe", method="ig", steps=48)
    assert result.teacher_forced and result.deltas is not None
    assert max(abs(d) for d in result.deltas) < 1e-3
    assert max(abs(sum(row)) for row in result.source_scores) > 5
    assert result.output_tokens == ("c", "a", "f", "e", "<EOS>")


def test_refusals_name_the_config_form(tmp_path: Path) -> None:
    bare = _folder(tmp_path / "bare", None)
    (bare / "config.json").write_text(json.dumps({"decoder_start_token_id": 1, "eos_token_id": 2}))
    r = subprocess.run([sys.executable, "-m", "blackbox_sal", "explain", "--model", str(bare), "--generate", "4",
                        "abc"], capture_output=True, text=True, timeout=120,
                       env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert r.returncode == 3 and r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and 'config.json "encoder_decoder": {"encoder": "encoder.onnx"' in lines[0], r.stderr
    spec = {k: v for k, v in CONFIG["encoder_decoder"].items() if k != "state"}
    _folder(tmp_path / "stateless", {**CONFIG, "encoder_decoder": spec})
    with pytest.raises(ModelError, match=r"returns \['hidden_out'\] beside 'logprobs'.*\"state\""):
        load_file_pair(tmp_path / "stateless")
    spec = {k: v for k, v in CONFIG["encoder_decoder"].items() if k != "padding_mask"}
    _folder(tmp_path / "maskless", {**CONFIG, "encoder_decoder": spec})
    with pytest.raises(ModelError, match=r"\"padding_mask\" \(True on padding\) or \"attention_mask\""):
        load_file_pair(tmp_path / "maskless")
    # feeds unsaid: memory <- memory_out, src_mask <- src_mask_out, hidden <- hidden_out by name
    spec = {k: v for k, v in CONFIG["encoder_decoder"].items() if k != "feeds"}
    _folder(tmp_path / "matched", {**CONFIG, "encoder_decoder": spec})
    assert dict(load_file_pair(tmp_path / "matched").feeds) == CONFIG["encoder_decoder"]["feeds"]
    with pytest.raises(UsageError, match="no gradient graph"):
        explain_generation(load_file_pair(tmp_path / "matched"), "abc", generate_tokens=2, backend="graph")


#: arabic-name-romanizer's wheel, where benchmarks/third_party.py caches it
WHEELS = ROOT / "models" / ".cache" / "third-party" / "wheels" / "arabic-name-romanizer"


@pytest.mark.heavy
def test_the_real_package_generates_as_its_own_beam_search_at_width_1(tmp_path: Path) -> None:
    """arabic-name-romanizer 0.2.0: the package's beam search (inference.py) at width 1,
    written out here with onnxruntime (its first step bans the end token, which never wins
    there on these names), gives the same characters as greedy generation from the folder."""
    wheels = sorted(WHEELS.glob("*.whl"))
    if not wheels:
        pytest.skip(f"no arabic-name-romanizer wheel under {WHEELS} (python benchmarks/third_party.py downloads it)")
    with zipfile.ZipFile(wheels[0]) as z:
        for name in ("encoder.onnx", "decoder.onnx", "vocab.json"):
            (tmp_path / name).write_bytes(z.read(f"arabic_name_romanizer/resources/{name}"))
    (tmp_path / "config.json").write_text(json.dumps(CONFIG))
    pair = load_encoder_decoder(tmp_path)
    assert isinstance(pair, FilePair)
    tokens = json.loads((tmp_path / "vocab.json").read_text())["tokens"]
    enc = ort.InferenceSession(str(tmp_path / "encoder.onnx"))
    dec = ort.InferenceSession(str(tmp_path / "decoder.onnx"))
    for name in ("محمد", "علي", "عبد الرحمن", "فاطمة"):
        src = [tokens.index("<UNK_COUNTRY>"), tokens.index("<ROLE_UNKNOWN>"), *map(tokens.index, name), 2]
        ids = np.array([src], np.int64)
        state = dict(zip(["memory", "src_mask", "hidden"], enc.run(None, {"src": ids, "src_mask": ids == 0}),
                         strict=True))
        prefix = np.array([[1]], np.int64)
        for t in range(32):
            logprobs, state["hidden"] = dec.run(None, {"prefix": prefix, **state})
            if t == 0:
                logprobs[:, 2] = -np.inf
            prefix = np.concatenate([prefix, [[int(np.argmax(logprobs[0]))]]], axis=1)
            if prefix[0, -1] == 2:
                break
        want = [int(i) for i in prefix[0, 1:]]
        got = pair.greedy(np.array(src), 32)[0]
        assert got == want, (name, "".join(tokens[i] for i in want))
        result = explain_generation(pair, "<UNK_COUNTRY><ROLE_UNKNOWN>" + name, target_text="".join(
            tokens[i] for i in want[:-1]), method="grad-x-input", batch_size=512) if len(name) <= 4 else None
        if result is not None:
            assert [tokens.index(t) for t in result.output_tokens] == want
