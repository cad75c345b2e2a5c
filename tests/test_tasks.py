"""Task families beyond classification: a causal LM's next token."""

from __future__ import annotations

import json
from itertools import pairwise
from pathlib import Path

import numpy as np
import onnx
import pytest
import tiny

from blackbox_sal import ExplainConfig, explain, load_model, render_json, render_terminal
from blackbox_sal.surgery.names import NEXT_TOKEN
from blackbox_sal.vocabulary.errors import UsageError

D = 6
TABLE = tiny.table(D, seed=7)
PROMPT = "the film was"


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny.write_model_dir(tmp_path_factory.mktemp("lm"), tiny.causal_lm(TABLE))


def closed_form(token: int) -> np.ndarray:
    ids = tiny.tokenizer().encode(PROMPT).ids
    x = TABLE[ids]
    return (tiny.causal_lm_grad(x, TABLE, token) * x).sum(-1)


def test_causal_lm_is_explained_at_its_last_position(lm_dir: Path) -> None:
    model = load_model(lm_dir)  # the split (a table tied to the head) is checked at the last position
    assert model.task == "next-token" and model.output == NEXT_TOKEN
    ids = tiny.tokenizer().encode(PROMPT).ids
    logits = np.tanh(TABLE[ids].astype(np.float64).sum(0)) @ TABLE.T
    for backend in ("graph", "fd"):
        e = explain(model, PROMPT, ExplainConfig(method="grad-x-input", backend=backend))
        assert e.backend == backend and e.task == "next-token"
        assert e.prediction.index == int(np.argmax(logits))
        assert e.prediction.label == model.tokenizer.decode([e.prediction.index])
        assert [t.index for t in e.prediction.top] == list(np.argsort(-logits)[:5])
        np.testing.assert_allclose([t.score for t in e.tokens], closed_form(e.target.index), rtol=2e-3, atol=1e-4)


def test_next_token_target_by_token(lm_dir: Path) -> None:
    model = load_model(lm_dir)
    e = explain(model, PROMPT, ExplainConfig(method="ig", target="good", steps=16))
    assert e.target.index == tiny.VOCAB["good"] and e.target.label == "good"
    assert abs(e.convergence_delta or 0) < 1e-3
    doc = json.loads(render_json(e))
    assert doc["task"] == "next-token" and doc["target"]["label"] == "good"
    assert len(doc["prediction"]["top"]) == 5
    assert "next-token candidates: " in render_terminal(e)
    with pytest.raises(UsageError, match="not a single token"):
        explain(model, PROMPT, ExplainConfig(target="good film"))


def test_generation_is_attributed_step_by_step(lm_dir: Path) -> None:
    from blackbox_sal import explain_generation, render_json, render_terminal

    model = load_model(lm_dir)
    g = explain_generation(model, PROMPT, 3, ExplainConfig(method="grad-x-input", backend="graph"))
    assert len(g.generated) == len(g.steps) == 3 and g.text.startswith(PROMPT)
    vocab = {i: w for w, i in tiny.VOCAB.items()}
    ids = list(tiny.tokenizer().encode(PROMPT).ids)
    for token, step in zip(g.generated, g.steps, strict=True):
        logits = np.tanh(TABLE[ids].astype(np.float64).sum(0)) @ TABLE.T
        assert token.index == int(np.argmax(logits)) and token.label == vocab[token.index]
        assert len(step.tokens) == len(ids) and step.target.index == token.index
        x = TABLE[ids]
        np.testing.assert_allclose([t.score for t in step.tokens],
                                   (tiny.causal_lm_grad(x, TABLE, token.index) * x).sum(-1), rtol=1e-4, atol=1e-5)
        ids.append(token.index)
    # the continuation is the generated words, in order (the word-level vocabulary decodes them with spaces)
    assert g.text[len(PROMPT):].split() == [t.label for t in g.generated]
    doc = json.loads(render_json(g))
    assert [s["target"]["index"] for s in doc["generation"]["steps"]] == [t.index for t in g.generated]
    matrix = render_terminal(g)
    assert matrix.count("\n") >= len(ids) + 4
    with pytest.raises(UsageError, match="causal LM"):
        explain_generation(load_model(tiny.write_model_dir(lm_dir.parent / "clf", tiny.tanh_mlp(
            TABLE, *tiny.mlp_weights(D, 4, 2, seed=1)))), PROMPT, 2)


def successor_lm(folder: Path, prompt: str, continuation: str) -> Path:
    """A byte-level BPE tokenizer and an LM that always predicts the successor of the last
    token along prompt -> continuation -> end-of-text: one-hot embeddings, logits = E @ M with
    M[v, succ(v)] = 10. ``continuation``'s characters take several byte tokens each."""
    from onnx import TensorProto, helper, numpy_helper
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(["the cat sat on the mat"] * 4, trainers.BpeTrainer(
        vocab_size=280, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=["<|endoftext|>"]))
    chain = tok.encode(prompt).ids[-1:] + tok.encode(continuation).ids + [tok.token_to_id("<|endoftext|>")]
    assert len(set(chain)) == len(chain)  # every token has one successor
    v = tok.get_vocab_size()
    m = np.zeros((v, v), np.float32)
    for a, b in pairwise(chain):
        m[a, b] = 10.0
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "input_ids"], ["E"]), helper.make_node("MatMul", ["E", "M"], ["logits"])],
        "successor", [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "seq", v])],
        [numpy_helper.from_array(np.eye(v, dtype=np.float32), "table"), numpy_helper.from_array(m, "M")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    folder.mkdir()
    onnx.save(model, str(folder / "model.onnx"))
    tok.save(str(folder / "tokenizer.json"))
    return folder


def test_generation_text_is_decoded_across_the_bytes_of_a_character(tmp_path: Path) -> None:
    """' é日' is six byte-level tokens (space, 2 bytes, 3 bytes): each decodes alone to U+FFFD,
    together to the characters. The text must read ' é日', each character's span on the token
    that completes it; a generation stopped inside a character keeps its bytes as U+FFFD."""
    from blackbox_sal import explain_generation, render_terminal

    model = load_model(successor_lm(tmp_path / "bytes", "the cat", " é日"))
    assert model.task == "next-token"
    g = explain_generation(model, "the cat", 10, ExplainConfig(method="grad-x-input", backend="graph"))
    assert len(g.generated) == 6 and g.text == "the cat é日"
    assert sum("\ufffd" in (t.label or "") for t in g.generated) == 5  # alone, all but the space are partial
    spans = [(t.text, t.start, t.end) for t in g.steps[-1].tokens[-5:]]
    assert spans == [(" ", 7, 8), ("", 8, 8), ("é", 8, 9), ("", 9, 9), ("", 9, 9)]
    for step in g.steps:  # only the last token drives the next: grad x input = M[last, next] = 10
        np.testing.assert_allclose([t.score for t in step.tokens], [0.0] * (len(step.tokens) - 1) + [10.0], atol=1e-5)
    matrix = render_terminal(g)
    assert "\ufffd" not in matrix and f"<{g.generated[1].index}>" in matrix and "continuation: ' é日'" in matrix
    cut = explain_generation(model, "the cat", 4, ExplainConfig(method="grad-x-input", backend="graph"))
    assert cut.text == "the cat é\ufffd"


def test_similarity_is_attributed_to_both_texts(tmp_path: Path) -> None:
    """An encoder (tanh MLP, mean over tokens -> [batch, 4]): the cosine of two texts'
    embeddings, each text explained with the other's embedding fixed."""
    from blackbox_sal import explain_similarity, render_json, render_terminal

    w1, b1, w2 = tiny.mlp_weights(D, 5, 4, seed=2)
    model = load_model(tiny.write_model_dir(tmp_path / "enc", tiny.tanh_mlp(TABLE, w1, b1, w2)))
    a, b = "the film was good", "great plot and awful film"
    sim = explain_similarity(model, a, b, ExplainConfig(method="ig", steps=24))

    def embed(text: str) -> np.ndarray:
        x = TABLE[tiny.tokenizer().encode(text).ids].astype(np.float64)
        return np.tanh(x @ w1 + b1).sum(0) @ w2

    ea, eb = embed(a), embed(b)
    want = ea @ eb / np.linalg.norm(ea) / np.linalg.norm(eb)
    assert sim.cosine == pytest.approx(want, rel=1e-5)
    for side in sim.texts:
        assert side.task == "similarity" and side.target_value == pytest.approx(want, rel=1e-5)
        assert side.backend == "graph"
        assert abs(side.convergence_delta or 0) < 1e-3  # sum of scores = cos(x, r) - cos(x', r)
    fd = explain_similarity(model, a, b, ExplainConfig(method="grad-x-input", backend="fd", richardson=True))
    graph = explain_similarity(model, a, b, ExplainConfig(method="grad-x-input", backend="graph"))
    for f_side, g_side in zip(fd.texts, graph.texts, strict=True):
        np.testing.assert_allclose([t.score for t in g_side.tokens], [t.score for t in f_side.tokens],
                                   rtol=1e-3, atol=1e-5)
    doc = json.loads(render_json(sim))
    assert doc["similarity"]["cosine"] == pytest.approx(want, rel=1e-5)
    assert [t["text"] for t in doc["similarity"]["texts"]] == [a, b]
    assert "cosine similarity of the two texts' embeddings" in render_terminal(sim)


def multiple_choice_model(w1: np.ndarray, b1: np.ndarray, w2: np.ndarray):  # type: ignore[no-untyped-def]
    """A multiple-choice export in miniature: input_ids [batch, choices, seq] -> Flatten ->
    per-sequence score sum_s tanh(E_s W1 + b1) w2 -> logits [batch, choices]."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes = [helper.make_node("Flatten", ["input_ids"], ["flat"], axis=2),               # [B*C, S]
             helper.make_node("Gather", ["table", "flat"], ["E"]),
             helper.make_node("MatMul", ["E", "W1"], ["h0"]), helper.make_node("Add", ["h0", "B1"], ["h1"]),
             helper.make_node("Tanh", ["h1"], ["h"]),
             helper.make_node("ReduceSum", ["h", "axes1"], ["pooled"], keepdims=0),
             helper.make_node("MatMul", ["pooled", "W2"], ["s"]),                          # [B*C, 1]
             helper.make_node("Shape", ["input_ids"], ["shape"]),
             helper.make_node("Slice", ["shape", "zero", "two"], ["bc"]),
             helper.make_node("Reshape", ["s", "bc"], ["logits"])]
    inits = {"table": TABLE, "W1": w1, "B1": b1, "W2": w2, "axes1": np.array([1], np.int64),
             "zero": np.array([0], np.int64), "two": np.array([2], np.int64)}
    graph = helper.make_graph(
        nodes, "mc", [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "choices", "seq"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "choices"])],
        [numpy_helper.from_array(v, k) for k, v in inits.items()])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", tiny.OPSET)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m


def test_multiple_choice_scores_each_pair_and_explains_the_best(tmp_path: Path) -> None:
    from blackbox_sal import explain_choices, render_json, render_terminal

    w1, b1, w2 = tiny.mlp_weights(D, 5, 1, seed=4)
    model = load_model(tiny.write_model_dir(tmp_path / "mc", multiple_choice_model(w1, b1, w2)))
    assert model.task == "multiple-choice"
    context, choices = "the film was", ["good", "bad", "awful", "great"]
    result = explain_choices(model, context, choices, ExplainConfig(method="grad-x-input", backend="graph"))

    def pair_ids(choice: str) -> list[int]:
        return tiny.tokenizer().encode(context, choice).ids

    want = [float(np.tanh(TABLE[pair_ids(c)].astype(np.float64) @ w1 + b1).sum(0) @ w2[:, 0]) for c in choices]
    np.testing.assert_allclose(np.array([c.value for c in result.choices], float), want, rtol=1e-5)
    assert result.predicted == int(np.argmax(want))
    x = TABLE[pair_ids(choices[result.predicted])]
    np.testing.assert_allclose([t.score for t in result.explanation.tokens],
                               (tiny.tanh_mlp_grad(x, w1, b1, w2, 0) * x).sum(-1), rtol=1e-4, atol=1e-5)
    assert result.explanation.tokens[-1].text == choices[result.predicted]  # the answer's own token is scored
    doc = json.loads(render_json(result))
    assert doc["choices"]["predicted"] == result.predicted and len(doc["choices"]["choices"]) == 4
    assert f"* {result.predicted}: " in render_terminal(result)
    with pytest.raises(UsageError, match="at least two"):
        explain_choices(model, context, ["good"])
    classifier = load_model(tiny.write_model_dir(tmp_path / "clf", tiny.tanh_mlp(TABLE, *tiny.mlp_weights(D, 4, 3, 1))))
    with pytest.raises(UsageError, match="3 output classes: say with --target"):
        explain_choices(classifier, context, choices)
    assert explain_choices(classifier, context, choices, ExplainConfig(target=2)).explanation.target.index == 2


def test_pair_tokens_point_into_the_combined_text() -> None:
    from tokenizers import processors

    from blackbox_sal.text.tokenization import PAIR_SEPARATOR, tokenize_pair

    tok = tiny.tokenizer()
    cls, sep = tiny.VOCAB["[CLS]"], tiny.VOCAB["[SEP]"]
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    t = tokenize_pair(tok, "the film was", "good plot", None)
    assert t.text == "the film was" + PAIR_SEPARATOR + "good plot"
    assert list(t.strings) == ["[CLS]", "the", "film", "was", "[SEP]", "good", "plot", "[SEP]"]
    assert list(t.type_ids) == [0, 0, 0, 0, 0, 1, 1, 1]
    ordinary = [(s, o) for s, o, sp in zip(t.strings, t.offsets, t.special, strict=True) if not sp]
    assert all(t.text[a:b] == s for s, (a, b) in ordinary)
    assert [w for w in t.word_ids if w is not None] == [0, 1, 2, 3, 4]


def test_a_token_classifier_is_not_taken_for_a_causal_lm(tmp_path: Path) -> None:
    """[batch, seq, 3] per-token labels: not as wide as the vocabulary, so not next-token: a
    per-token model (its targets are positions), never tokens read as vocabulary entries."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes = [helper.make_node("Gather", ["table", "input_ids"], ["E"]),
             helper.make_node("MatMul", ["E", "W"], ["tags"])]
    graph = helper.make_graph(nodes, "ner", [tiny._ids_input()],
                              [helper.make_tensor_value_info("tags", TensorProto.FLOAT, ["batch", "seq", 3])],
                              [numpy_helper.from_array(TABLE, "table"),
                               numpy_helper.from_array(np.ones((D, 3), np.float32), "W")])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", tiny.OPSET)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    model = load_model(tiny.write_model_dir(tmp_path / "ner", m))
    assert model.task == "per-token"
    with pytest.raises(UsageError, match="per-token targets: give one with --at"):
        explain(model, PROMPT)


def test_multiple_choice_ranks_by_the_score_asked_for(tmp_path: Path) -> None:
    """A classifier scoring (context, choice) pairs by class 1: the highest logit is not the
    highest probability here, and the ranking follows --score, which the result names."""
    from blackbox_sal import explain_choices, render_json, render_terminal

    w1, b1, w2 = tiny.mlp_weights(D, 5, 3, seed=0)
    model = load_model(tiny.write_model_dir(tmp_path / "cls", tiny.tanh_mlp(TABLE, w1, b1, w2), ["a", "b", "c"]))
    context, choices = "the film was", ["good", "bad", "awful", "great"]
    outputs = []
    for c in choices:
        x = TABLE[tiny.tokenizer().encode(context, c).ids].astype(np.float64)
        outputs.append(np.tanh(x @ w1 + b1).sum(0) @ w2)
    z = np.array(outputs)
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    assert np.argmax(z[:, 1]) != np.argmax(p[:, 1])  # the case the ranking must get right
    for score, want in (("logit", z[:, 1]), ("probability", p[:, 1]), ("log-probability", np.log(p[:, 1]))):
        result = explain_choices(model, context, choices, ExplainConfig(method="grad-x-input", target="b",
                                                                        score=score))
        assert result.score == score and result.predicted == int(np.argmax(want))
        np.testing.assert_allclose(np.array([c.value for c in result.choices], float), want, rtol=1e-5)
        assert result.explanation.settings["score"] == score
        assert json.loads(render_json(result))["choices"]["score"] == score
        assert f"(ranked by b {score})" in render_terminal(result)
