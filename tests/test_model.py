"""Loading model directories and explaining through onnxruntime, against closed forms."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import tiny
from onnx import helper

from blackbox_sal import ExplainConfig, explain, load_model
from blackbox_sal.surgery.split import split_embedding
from blackbox_sal.vocabulary.errors import InputError, ModelError, UsageError

D, H = 6, 7
RNG = np.random.default_rng(5)
TABLE = tiny.table(D)
W1, B1, W2 = tiny.mlp_weights(D, H, 3, seed=5)
LABELS = ["neg", "neu", "pos"]
TEXT = tiny.TEXT


@pytest.fixture(scope="module")
def mlp_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny.write_model_dir(tmp_path_factory.mktemp("mlp"), tiny.tanh_mlp(TABLE, W1, B1, W2),
                                LABELS, with_cls=True, config={"max_length": 12})


def ids_of(text: str) -> np.ndarray:
    return np.array(tiny.tokenizer(with_cls=True).encode(text).ids)


def test_grad_x_input_through_onnx_matches_closed_form(mlp_dir: Path) -> None:
    model = load_model(mlp_dir)
    x = TABLE[ids_of(TEXT)]
    logits = np.tanh(x.astype(np.float64) @ W1 + B1).sum(0) @ W2
    for target in range(3):
        e = explain(model, TEXT, ExplainConfig(method="grad-x-input", target=target))
        want = (tiny.tanh_mlp_grad(x, W1, B1, W2, target) * x).sum(-1)
        np.testing.assert_allclose([t.score for t in e.tokens], want, rtol=2e-3, atol=2e-4)
        assert e.target_value == pytest.approx(logits[target], rel=1e-5)
    assert e.prediction.index == int(np.argmax(logits))
    assert e.prediction.label == LABELS[e.prediction.index]
    assert e.tokens[0].special and e.tokens[0].text == "[CLS]" and e.tokens[-1].text == "[SEP]"


def test_ig_through_onnx_is_complete_and_names_its_settings(mlp_dir: Path) -> None:
    model = load_model(mlp_dir)
    e = explain(model, TEXT, ExplainConfig(method="ig", target="pos", steps=32, backend="fd"))
    assert e.target.label == "pos" and e.target.index == 2
    gap = e.target_value - e.baseline_value  # type: ignore[operator]
    assert abs(e.convergence_delta) < 1e-3 * max(1.0, abs(gap))  # type: ignore[arg-type]
    assert sum(t.score for t in e.tokens) == pytest.approx(gap, abs=1e-3)
    assert e.tokens[0].score == 0.0  # [CLS] keeps its embedding in the baseline
    n_tokens = len(e.tokens) - 2  # specials cost nothing
    assert e.settings["forward_passes"] == 1 + 1 + 2 * n_tokens * 32
    assert e.settings["steps"] == 32 and e.settings["baseline"] == "pad"


def test_saliency_through_onnx(mlp_dir: Path) -> None:
    e = explain(load_model(mlp_dir), TEXT, ExplainConfig(method="saliency", target=0))
    x = TABLE[ids_of(TEXT)]
    want = np.linalg.norm(tiny.tanh_mlp_grad(x, W1, B1, W2, 0), axis=1)
    np.testing.assert_allclose([t.score for t in e.tokens], want, rtol=3e-3)


def test_probability_and_log_probability_scores(mlp_dir: Path) -> None:
    model = load_model(mlp_dir)
    x = TABLE[ids_of(TEXT)]
    z = np.tanh(x.astype(np.float64) @ W1 + B1).sum(0) @ W2
    p = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
    e = explain(model, TEXT, ExplainConfig(method="occlusion", score="probability", target=1))
    assert e.target_value == pytest.approx(p[1], rel=1e-5)
    e = explain(model, TEXT, ExplainConfig(method="occlusion", score="log-probability", target=1))
    assert e.target_value == pytest.approx(np.log(p[1]), rel=1e-5)


def test_batched_equals_one_by_one(mlp_dir: Path) -> None:
    model = load_model(mlp_dir)
    ids = ids_of(TEXT)
    points = TABLE[ids][None] * np.linspace(0.1, 1.0, 9, dtype=np.float32)[:, None, None]
    one = model.run(points, ids, np.zeros_like(ids), batch_size=1)
    many = model.run(points, ids, np.zeros_like(ids), batch_size=64)
    np.testing.assert_allclose(one, many, rtol=1e-6, atol=1e-7)  # float32 kernels per batch size
    a = explain(model, TEXT, ExplainConfig(method="ig", steps=8, batch_size=1))
    b = explain(model, TEXT, ExplainConfig(method="ig", steps=8, batch_size=500))
    # finite differences divide those float32 differences by the step (1e-2): ~1e-5 here
    np.testing.assert_allclose([t.score for t in a.tokens], [t.score for t in b.tokens], rtol=0, atol=5e-5)


def test_words_merge_subword_scores(tmp_path: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"[PAD]": 0, "[UNK]": 1, "good": 2, "##ness": 3, "film": 4}
    tok = Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    d = tiny.write_model_dir(tmp_path / "wp", tiny.tanh_mlp(TABLE[:5], W1, B1, W2))
    tok.save(str(d / "tokenizer.json"))
    e = explain(load_model(d), "goodness film", ExplainConfig(method="grad-x-input", words=True))
    assert [t.text for t in e.tokens] == ["good", "ness", "film"]
    assert [(w.text, w.start, w.end) for w in e.words] == [("goodness", 0, 8), ("film", 9, 13)]  # type: ignore[union-attr]
    assert e.words[0].score == pytest.approx(e.tokens[0].score + e.tokens[1].score)  # type: ignore[index]


def test_model_that_takes_inputs_embeds_with_a_table_beside_it(tmp_path: Path, mlp_dir: Path) -> None:
    split = split_embedding(onnx.load(str(mlp_dir / "model.onnx")))
    d = tiny.write_model_dir(tmp_path / "embeds", split.body, LABELS, with_cls=True)
    np.save(d / "embeddings.npy", split.table)
    given = explain(load_model(d), TEXT, ExplainConfig(method="occlusion"))
    splitted = explain(load_model(mlp_dir), TEXT, ExplainConfig(method="occlusion"))
    assert [t.score for t in given.tokens] == pytest.approx([t.score for t in splitted.tokens], abs=1e-6)
    assert load_model(d).origin == "given"


def test_onnx_file_path_with_tokenizer_beside_it(mlp_dir: Path) -> None:
    assert load_model(mlp_dir / "model.onnx").labels == tuple(LABELS)


# --- bad input: one clear error each ---------------------------------------------------

def test_missing_path() -> None:
    with pytest.raises(ModelError, match="model not found"):
        load_model("/no/such/model")


def test_garbage_onnx(tmp_path: Path) -> None:
    (tmp_path / "model.onnx").write_bytes(b"\x08\x07garbage\xff\xfe" * 100)
    tiny.tokenizer().save(str(tmp_path / "tokenizer.json"))
    with pytest.raises(ModelError, match="not a readable ONNX model"):
        load_model(tmp_path)


def test_text_file_pretending_to_be_onnx(tmp_path: Path) -> None:
    (tmp_path / "model.onnx").write_text("hello")
    tiny.tokenizer().save(str(tmp_path / "tokenizer.json"))
    with pytest.raises(ModelError, match="not a readable ONNX model"):
        load_model(tmp_path)


def test_missing_tokenizer(tmp_path: Path, mlp_dir: Path) -> None:
    (tmp_path / "model.onnx").write_bytes((mlp_dir / "model.onnx").read_bytes())
    with pytest.raises(ModelError, match="no tokenizer in .*: looked for tokenizer.json, vocab.txt"):
        load_model(tmp_path)


def test_model_without_embedding_lookup(tmp_path: Path) -> None:
    d = tiny.write_model_dir(tmp_path / "nolookup", tiny.no_lookup(D))
    with pytest.raises(ModelError, match="no word-embedding lookup"):
        load_model(d)


def test_empty_and_too_long_text(mlp_dir: Path) -> None:
    model = load_model(mlp_dir)
    for text in ("", "   \n"):
        with pytest.raises(InputError, match="empty"):
            explain(model, text)
    with pytest.raises(InputError, match="15 tokens; the model takes at most 12"):
        explain(model, " ".join(["good"] * 13))
    with pytest.raises(InputError, match="characters"):
        explain(model, "good " * 10, ExplainConfig(max_chars=20))


def test_unknown_label_and_bad_names(mlp_dir: Path) -> None:
    model = load_model(mlp_dir)
    with pytest.raises(UsageError, match="unknown target label 'posit'; did you mean 'pos'"):
        explain(model, TEXT, ExplainConfig(target="posit"))
    with pytest.raises(UsageError, match="out of range"):
        explain(model, TEXT, ExplainConfig(target=3))
    with pytest.raises(UsageError, match="unknown method 'integrated'.*choose from"):
        explain(model, TEXT, ExplainConfig(method="integrated"))
    with pytest.raises(UsageError, match="neither"):
        explain(model, TEXT, ExplainConfig(baseline="two words"))


def test_wrong_output_shape_is_a_model_error(tmp_path: Path) -> None:
    m = tiny.tanh_mlp(TABLE, W1, B1, W2)
    m.graph.node.append(helper.make_node("Unsqueeze", ["logits", "neg1"], ["logits3"]))
    m.graph.output.append(helper.make_tensor_value_info("logits3", onnx.TensorProto.FLOAT, ["batch", 3, 1]))
    d = tiny.write_model_dir(tmp_path / "o3", m)
    with pytest.raises(ModelError, match="expected \\[batch, classes\\]"):
        explain(load_model(d, output="logits3"), "good film")
    with pytest.raises(ModelError, match="no output 'nope'"):
        load_model(d, output="nope")


def test_external_data_outside_the_folder_is_refused(tmp_path: Path) -> None:
    m = tiny.tanh_mlp(TABLE, W1, B1, W2)
    d = tmp_path / "ext"
    d.mkdir()
    onnx.save(m, str(d / "model.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
              location="weights.bin", size_threshold=0)
    tiny.tokenizer().save(str(d / "tokenizer.json"))
    assert load_model(d).table.shape == TABLE.shape  # inside the folder: fine
    m2 = onnx.load(str(d / "model.onnx"), load_external_data=False)
    for t in m2.graph.initializer:
        for entry in t.external_data:
            if entry.key == "location":
                entry.value = "../outside.bin"
    onnx.save(m2, str(d / "model.onnx"))
    with pytest.raises(ModelError, match="outside the model folder"):
        load_model(d)


def test_custom_domain_is_refused(tmp_path: Path) -> None:
    m = tiny.tanh_mlp(TABLE, W1, B1, W2)
    m.opset_import.append(helper.make_opsetid("com.evil", 1))
    d = tiny.write_model_dir(tmp_path / "dom", m)
    with pytest.raises(ModelError, match="com.evil"):
        load_model(d)


def test_tokenizer_larger_than_table(tmp_path: Path) -> None:
    d = tiny.write_model_dir(tmp_path / "small", tiny.tanh_mlp(TABLE[:4], W1, B1, W2))
    with pytest.raises(ModelError, match="do not belong together"):
        load_model(d)


def test_bad_config_json(tmp_path: Path) -> None:
    d = tiny.write_model_dir(tmp_path / "cfg", tiny.tanh_mlp(TABLE, W1, B1, W2))
    (d / "config.json").write_text("{not json")
    with pytest.raises(ModelError, match="not valid JSON"):
        load_model(d)
    (d / "config.json").write_text(json.dumps({"id2label": {"0": "a", "2": "b"}}))
    with pytest.raises(ModelError, match="0..n-1"):
        load_model(d)


def test_linear_model_gradients_are_the_weights_and_degenerate(tmp_path: Path) -> None:
    """f_c = (sum_s x_s) . W[:, c]: grad_i = W[:, c] for every token (seed 004's pooling)."""
    w = RNG.normal(size=(D, 2)).astype(np.float32)
    model = load_model(tiny.write_model_dir(tmp_path / "lin", tiny.linear_sum(TABLE, w)))
    e = explain(model, "good film plot", ExplainConfig(method="saliency", target=1))
    np.testing.assert_allclose([t.score for t in e.tokens], [np.linalg.norm(w[:, 1])] * 3, rtol=1e-3)
    assert any("same gradient" in n for n in e.notes)
    x = TABLE[[vocab_id("good"), vocab_id("film"), vocab_id("plot")]]
    gxi = explain(model, "good film plot", ExplainConfig(method="grad-x-input", target=1))
    np.testing.assert_allclose([t.score for t in gxi.tokens], x @ w[:, 1], rtol=1e-3, atol=1e-5)
    ig = explain(model, "good film plot", ExplainConfig(method="ig", target=1, baseline="zero", steps=3))
    np.testing.assert_allclose([t.score for t in ig.tokens], x @ w[:, 1], rtol=1e-3, atol=1e-5)


def test_quadratic_model_closed_form(tmp_path: Path) -> None:
    """f_c = sum_s (x_s . w_c)^2: grad x input = 2 (x_i . w_c)^2; IG from 0 = (x_i . w_c)^2.
    Central differences are exact on quadratics, up to float32 round-off."""
    w = RNG.normal(size=(D, 2)).astype(np.float32)
    model = load_model(tiny.write_model_dir(tmp_path / "quad", tiny.quadratic(TABLE, w)))
    text = "the plot was awful"
    x = TABLE[[vocab_id(t) for t in text.split()]].astype(np.float64)
    proj = x @ w[:, 0]
    gxi = explain(model, text, ExplainConfig(method="grad-x-input", target=0))
    np.testing.assert_allclose([t.score for t in gxi.tokens], 2 * proj**2, rtol=1e-3, atol=1e-5)
    ig = explain(model, text, ExplainConfig(method="ig", target=0, baseline="zero", steps=2))
    np.testing.assert_allclose([t.score for t in ig.tokens], proj**2, rtol=1e-3, atol=1e-5)
    assert abs(ig.convergence_delta) < 1e-4  # type: ignore[arg-type]  # GL with 2 nodes is exact here
    sal = explain(model, text, ExplainConfig(method="saliency", target=0))
    want = np.abs(2 * proj) * np.linalg.norm(w[:, 0])
    np.testing.assert_allclose([t.score for t in sal.tokens], want, rtol=1e-3, atol=1e-5)


def vocab_id(word: str) -> int:
    return tiny.VOCAB[word]


def test_odd_output_names_and_a_second_output(tmp_path: Path) -> None:
    """An export whose outputs are called '2301' and 'hidden:0': the first is explained unless
    --model-output names another; the gradient graph follows the chosen one."""
    m = tiny.tanh_mlp(TABLE, W1, B1, W2)
    for node in m.graph.node:
        node.output[:] = ["2301" if o == "logits" else o for o in node.output]
    m.graph.output[0].name = "2301"
    m.graph.node.append(helper.make_node("Mul", ["2301", "2301"], ["hidden:0"]))
    m.graph.output.append(helper.make_tensor_value_info("hidden:0", onnx.TensorProto.FLOAT, ["batch", 3]))
    d = tiny.write_model_dir(tmp_path / "odd", m, LABELS, with_cls=True)
    first = explain(load_model(d), TEXT, ExplainConfig(method="grad-x-input", backend="graph", target=0))
    x = TABLE[ids_of(TEXT)]
    want = (tiny.tanh_mlp_grad(x, W1, B1, W2, 0) * x).sum(-1)
    np.testing.assert_allclose([t.score for t in first.tokens], want, rtol=1e-4, atol=1e-5)
    second = explain(load_model(d, output="hidden:0"), TEXT, ExplainConfig(method="grad-x-input", target=0))
    assert second.target_value == pytest.approx(first.target_value ** 2, rel=1e-5)


def test_unconverged_integrated_gradients_are_flagged(mlp_dir: Path) -> None:
    model = load_model(mlp_dir)
    coarse = explain(model, TEXT, ExplainConfig(method="ig", steps=1, quadrature="riemann-left"))
    assert any(n.startswith("integrated gradients have not converged") for n in coarse.notes)
    fine = explain(model, TEXT, ExplainConfig(method="ig", steps=32))
    assert not any("not converged" in n for n in fine.notes)
    assert abs(fine.convergence_delta or 0) < 0.05 * abs(fine.target_value - (fine.baseline_value or 0))


LONG_TEXT = " ".join(["the film was good and the plot great", "bad awful", "the film and the plot was great"] * 3)


def test_long_text_is_refused_or_explained_in_windows(mlp_dir: Path) -> None:
    model = load_model(mlp_dir)  # max_length 12, [CLS] ... [SEP]
    with pytest.raises(InputError, match="takes at most 12.*--long window"):
        explain(model, LONG_TEXT, ExplainConfig(method="grad-x-input"))
    e = explain(model, LONG_TEXT, ExplainConfig(method="grad-x-input", long="window", window_overlap=3))
    ids = np.array(tiny.tokenizer(with_cls=True).encode(LONG_TEXT).ids)
    assert [t.text for t in e.tokens] == [tiny.tokenizer(with_cls=True).id_to_token(i) for i in ids]
    assert e.windows is not None and len(e.windows) == int(np.ceil((len(ids) - 2 - 3) / (10 - 3)))
    assert e.windows[0].start == 0 and e.windows[-1].end == len(LONG_TEXT)
    # this model adds up per-token terms: a token's gradient does not depend on its window
    x = TABLE[ids]
    want = (tiny.tanh_mlp_grad(x, W1, B1, W2, e.target.index) * x).sum(-1)
    want[0] = want[-1] = 0.0
    np.testing.assert_allclose([t.score for t in e.tokens], want, rtol=2e-3, atol=2e-4)
    assert e.notes[0].startswith(f"the text has {len(ids)} tokens, more than the model's 12: explained in "
                                 f"{len(e.windows)} windows overlapping by 3 tokens")
    assert e.settings["windows"] == len(e.windows)
    # IG with steps auto: each window settles on its own count; settings give the most, and the
    # gradient runs of all windows
    ig = explain(model, LONG_TEXT, ExplainConfig(method="ig", steps="auto", long="window", window_overlap=3))
    auto = ExplainConfig(method="ig", steps="auto", target=ig.target.index)
    per_window = [explain(model, LONG_TEXT[w.start:w.end], auto) for w in ig.windows or ()]
    assert ig.settings["steps"] == max(int(p.settings["steps"]) for p in per_window)
    assert ig.settings["gradient_passes"] == sum(int(p.settings["gradient_passes"]) for p in per_window)
    with pytest.raises(InputError, match="cannot overlap by 10"):
        explain(model, LONG_TEXT, ExplainConfig(long="window", window_overlap=10))


def test_windows_stitch_a_token_by_its_mean_over_the_windows_that_hold_it(tmp_path: Path) -> None:
    """A convolution reads each token's neighbours, so a token near a window's edge scores
    differently in each window that holds it: the stitched score is the mean of those."""
    w = np.random.default_rng(8).normal(size=(4, 2)).astype(np.float32)
    d = tiny.write_model_dir(tmp_path / "conv", tiny.conv_tanh(TABLE, w, kernel=5), with_cls=True,
                             config={"max_length": 12})
    model = load_model(d)
    cfg = ExplainConfig(method="grad-x-input", long="window", window_overlap=4)
    e = explain(model, LONG_TEXT, cfg)
    assert e.windows is not None and len(e.windows) >= 3
    seen: dict[tuple[int, int], list[float]] = {}
    for window in e.windows:
        part = explain(model, LONG_TEXT[window.start:window.end], ExplainConfig(method="grad-x-input",
                                                                                target=e.target.index))
        for t in part.tokens:
            if not t.special:
                seen.setdefault((t.start + window.start, t.end + window.start), []).append(t.score)
    shared = [v for v in seen.values() if len(v) > 1]
    assert shared and max(np.ptp(v) for v in shared) > 1e-3  # the windows disagree on shared tokens
    for t in e.tokens:
        if not t.special:
            assert t.score == pytest.approx(float(np.mean(seen[(t.start, t.end)])), rel=1e-9, abs=1e-12)


def test_a_model_is_a_frozen_description_and_its_runtime_is_its_own(mlp_dir: Path) -> None:
    """What the model is cannot change under a reader; what runs it (session, lazily built
    graphs) belongs to one model, so a model with other weights keeps nothing of the first's."""
    import dataclasses
    import threading
    import time

    model = load_model(mlp_dir)
    with pytest.raises(dataclasses.FrozenInstanceError):
        model.output = "other"  # type: ignore[misc]
    with pytest.raises(TypeError):
        model.int_inputs["extra"] = np.int64  # type: ignore[index]
    assert model.session is model.runtime.session and model.cache is model.runtime.built
    assert (model.device_request, model.threads, model.device) == ("auto", 0, "cpu")

    calls: list[int] = []

    def make() -> int:
        calls.append(1)
        time.sleep(0.05)  # long enough for every thread to ask while the first is making it
        return 42

    got: list[int] = []
    threads = [threading.Thread(target=lambda: got.append(model.runtime.kept("answer", make))) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert got == [42] * 6 and calls == [1]

    def broken() -> int:
        raise ModelError("no")

    with pytest.raises(ModelError):
        model.runtime.kept("broken", broken)
    assert "broken" not in model.runtime.built  # a failure keeps nothing: the next caller tries again

    ids, types, mask = model.probe()
    x = model.embed(ids)[None]
    twin = model.with_weights(model.body)
    assert twin.runtime is not model.runtime and twin.runtime.built == {} and "answer" in model.runtime.built
    np.testing.assert_array_equal(twin.forward(x, ids, types, mask), model.forward(x, ids, types, mask))
    doubled = model.with_weights(model.body, table=2 * model.table)
    assert doubled.row_norm == pytest.approx(2 * model.row_norm)
    np.testing.assert_array_equal(doubled.embed(ids), 2 * model.embed(ids))
