"""Per-token targets (taggers): the loader routes [batch, seq, labels] outputs to them, targets
are found and grouped into entities, explained against PyTorch autograd's answers (stored by
models/build_tagger.py), packed k at a time equal to one at a time, and contrasted."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import tiny
from onnx import TensorProto, helper, numpy_helper

from blackbox_sal import ExplainConfig, explain, load_model, render_html, render_json, render_terminal
from blackbox_sal.api.per_token import explain_tokens, explain_tokens_many
from blackbox_sal.model.text_model import TextModel
from blackbox_sal.render import palette
from blackbox_sal.targets.per_token import entities, tag_parts
from blackbox_sal.text.words import Span
from blackbox_sal.vocabulary.errors import ModelError, UsageError
from blackbox_sal.vocabulary.result import Explanation, Label, Prediction, Provenance, TokenTarget, TokenTargets
from blackbox_sal.vocabulary.runs import All, Forward, Gradient, drive, together
from blackbox_sal.vocabulary.scores import Contrast, TokenWeights

TAGGER = Path(__file__).resolve().parents[1] / "models" / "tiny-tagger"
REF = np.load(TAGGER / "reference.npz")
TEXTS = ["ada lovelace met alan turing in london .",
         "grace hopper visited new york and paris with marie curie today ."]


@pytest.fixture(scope="module")
def tagger() -> TextModel:
    return load_model(TAGGER)


def expected(n: int, kind: str) -> np.ndarray:
    """Grad x input of autograd's gradient: [S]."""
    return (REF[f"embeddings_{n}"].astype(np.float64) * REF[f"grad_{kind}_{n}"]).sum(-1)


def scores(e: object) -> np.ndarray:
    return np.array([t.score for t in e.tokens])  # type: ignore[attr-defined]


def test_the_tagger_is_loaded_as_a_per_token_model(tagger: TextModel) -> None:
    assert tagger.task == "per-token" and tagger.output == "logits__flat"
    assert tagger.labels == ("O", "B-PER", "I-PER", "B-LOC", "I-LOC")
    ids = REF["ids_0"]
    out = tagger.forward(tagger.embed(ids)[None], ids, np.zeros_like(ids))
    np.testing.assert_allclose(out.reshape(len(ids), 5), REF["logits_0"], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("n", [0, 1])
def test_one_token_target_equals_autograd(tagger: TextModel, n: int) -> None:
    pos, label = (int(v) for v in REF[f"target_{n}"])
    for backend, tol in (("graph", 1e-5), ("fd", 1e-3)):
        e = explain(tagger, TEXTS[n], ExplainConfig(method="grad-x-input", backend=backend, at=pos,
                                                     target=label))
        assert e.task == "per-token" and e.backend == backend and e.target.index == label
        assert e.target_value == pytest.approx(REF[f"logits_{n}"][pos, label], rel=1e-5)
        want = expected(n, "token")
        np.testing.assert_allclose(scores(e), want, rtol=tol, atol=tol * np.abs(want).max())


@pytest.mark.parametrize("n", [0, 1])
def test_every_entity_explained_together_equals_autograd(tagger: TextModel, n: int) -> None:
    result = explain_tokens(tagger, TEXTS[n], ExplainConfig(method="grad-x-input", backend="graph"))
    first = result.targets[0]
    assert first.positions == tuple(int(i) for i in REF[f"entity_{n}"])
    assert first.label == "PER" and first.text == " ".join(TEXTS[n].split()[:2])
    want = expected(n, "entity")
    np.testing.assert_allclose(scores(first.explanation), want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
    entity_value = sum(REF[f"logits_{n}"][i, REF[f"logits_{n}"][i].argmax()] for i in first.positions)
    assert first.explanation.target_value == pytest.approx(entity_value, rel=1e-5)
    assert [t.text for t in result.targets] == (["ada lovelace", "alan turing", "london"] if n == 0 else
                                                ["grace hopper", "new york", "paris", "marie curie"])
    assert np.shape(result.matrix) == (len(result.targets), len(REF[f"ids_{n}"]))


def test_contrast_equals_autograd(tagger: TextModel) -> None:
    pos, label = (int(v) for v in REF["target_0"])
    e = explain(tagger, TEXTS[0], ExplainConfig(method="grad-x-input", backend="graph", at=pos, contrast="O"))
    assert e.target.label == f"{tagger.labels[label]} rather than O"  # type: ignore[index]
    logits = REF["logits_0"]
    assert e.target_value == pytest.approx(logits[pos, label] - logits[pos, 0], rel=1e-5)
    want = expected(0, "contrast")
    np.testing.assert_allclose(scores(e), want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


def test_ig_completeness_per_target(tagger: TextModel) -> None:
    result = explain_tokens(tagger, TEXTS[1], ExplainConfig(method="ig", steps=64))
    assert len(result.targets) == 4
    for t in result.targets:
        e = t.explanation
        assert e.baseline_value is not None and e.convergence_delta is not None
        assert abs(sum(scores(e)) - (e.target_value - e.baseline_value)) == pytest.approx(abs(e.convergence_delta))
        assert abs(e.convergence_delta) < 1e-3 * abs(e.target_value - e.baseline_value)


@pytest.mark.parametrize("method", ["grad-x-input", "saliency", "ig", "smoothgrad", "occlusion"])
def test_k_packed_targets_equal_k_single_explanations(tagger: TextModel, method: str) -> None:
    cfg = ExplainConfig(method=method, steps=8, samples=3)
    result = explain_tokens(tagger, TEXTS[1], cfg)
    for t in result.targets:
        single = explain(tagger, TEXTS[1], ExplainConfig(method=method, steps=8, samples=3, at=t.text))
        assert single.target_value == t.explanation.target_value
        np.testing.assert_allclose(scores(t.explanation), scores(single), rtol=1e-6, atol=1e-9)


def test_packed_targets_share_runs(tagger: TextModel) -> None:
    """The k targets' rows go out in one All per step: one forward run for the k prediction
    rows, one gradient run for the k seeded rows (grad x input), not 2k runs."""
    from blackbox_sal.api.per_token import token_targets
    from blackbox_sal.engine.runner import Runner

    runner = Runner(tagger, rows=64)
    asked: list[tuple[str, ...]] = []

    def answer(request: object) -> object:
        return runner.execute([request])[0]  # type: ignore[list-item]

    work = token_targets(tagger, TEXTS[1], ExplainConfig(method="grad-x-input").validated())
    step = next(work)
    try:
        while True:
            requests = step.requests if isinstance(step, All) else (step,)
            asked.append(tuple(type(r).__name__ for r in requests))
            got = [answer(r) for r in requests]
            step = work.send(got if isinstance(step, All) else got[0])
    except StopIteration as stop:
        result = stop.value
    assert len(result.targets) == 4
    assert asked == [("Forward",), ("Forward",) * 4, ("PathJvp",) * 4]


def test_together_answers_each_work_its_own_results() -> None:
    def work(k: int):  # type: ignore[no-untyped-def]
        first = yield Forward(None, np.full((1, 1, 1), k, np.float32))  # type: ignore[arg-type]
        if k == 0:
            return float(first[0])
        second = yield All((Gradient(None, np.zeros((1, 1, 1)), np.zeros((1, 1))),) * k)  # type: ignore[arg-type]
        return float(first[0]) + len(second)

    calls: list[str] = []

    def answer(r: object) -> np.ndarray:
        calls.append(type(r).__name__)
        return np.asarray(r.points, np.float64).ravel()[:1] if isinstance(r, Forward) else np.zeros(1)

    assert drive(together([work(0), work(2), work(3)]), answer) == [0.0, 4.0, 6.0]
    assert calls == ["Forward"] * 3 + ["Gradient"] * 5


@pytest.mark.parametrize(("tags", "want"), [
    (["O", "B-PER", "I-PER", "O", "B-LOC", "B-LOC", "I-PER"], [[1, 2], [4], [5], [6]]),  # BIO
    (["B-PER", "L-PER", "U-LOC", "U-LOC", "O"], [[0, 1], [2], [3]]),  # BILOU
    (["B-X", "I-X", "E-X", "S-X", "B-X", "E-X"], [[0, 1, 2], [3], [4, 5]]),  # BIES
    (["PER", "PER", "O", "LOC", "PER"], [[0, 1], [3], [4]]),  # IO: runs of one tag
])
def test_entities_group_tag_schemes(tags: list[str], want: list[list[int]]) -> None:
    labels = sorted(set(tags))
    assert entities([labels.index(t) for t in tags], labels, range(len(tags))) == want
    assert tag_parts("B-PER") == ("B", "PER") and tag_parts("PER") == ("", "PER")


def test_token_weight_seeds_equal_finite_differences() -> None:
    rng = np.random.default_rng(0)
    z = rng.normal(size=(2, 12))  # 2 rows, S=4 positions x L=3 labels
    w = np.zeros((4, 3))
    w[1, 2], w[2, 2], w[3, 0] = 1.0, 1.0, -1.0
    for score in ("logit", "probability", "log-probability"):
        objective = TokenWeights(w, score)
        seed = objective.seed(z)
        fd = np.zeros_like(z)
        for c in range(z.shape[1]):
            step = np.zeros_like(z)
            step[:, c] = 1e-6
            fd[:, c] = (objective.scalar(z + step) - objective.scalar(z - step)) / 2e-6
        np.testing.assert_allclose(seed, fd, rtol=1e-6, atol=1e-8)
    per_position = z.reshape(2, 4, 3)
    assert TokenWeights(w).scalar(z)[1] == pytest.approx(per_position[1, 1, 2] + per_position[1, 2, 2]
                                                          - per_position[1, 3, 0])
    contrast = Contrast(2, 0, "probability")  # p2 - p0: every class moves it through the softmax
    fd = np.stack([(contrast.scalar(z + 1e-6 * e) - contrast.scalar(z - 1e-6 * e)) / 2e-6 for e in np.eye(12)], 1)
    np.testing.assert_allclose(contrast.seed(z), fd, rtol=1e-6, atol=1e-9)
    assert np.abs(fd[:, 5]).min() > 1e-4


def test_contrast_on_a_classifier_is_the_difference_of_two_explanations(tmp_path: Path) -> None:
    table = tiny.table(4, seed=3)
    weights = np.arange(12.0, dtype=np.float32).reshape(4, 3)
    model = load_model(tiny.write_model_dir(tmp_path, tiny.linear_sum(table, weights)))
    text = "the film was good"
    cfg = {"method": "grad-x-input", "backend": "graph"}
    a = explain(model, text, ExplainConfig(**cfg, target=2))  # type: ignore[arg-type]
    b = explain(model, text, ExplainConfig(**cfg, target=0))  # type: ignore[arg-type]
    both = explain(model, text, ExplainConfig(**cfg, target=2, contrast=0))  # type: ignore[arg-type]
    assert both.target.label == "2 rather than 0"
    assert both.target_value == pytest.approx(a.target_value - b.target_value)
    np.testing.assert_allclose(scores(both), scores(a) - scores(b), rtol=1e-5, atol=1e-6)
    with pytest.raises(UsageError, match="the target itself"):
        explain(model, text, ExplainConfig(target=1, contrast=1))


def test_target_choice_errors(tagger: TextModel) -> None:
    with pytest.raises(UsageError, match="3 per-token targets: give one with --at"):
        explain(tagger, TEXTS[0])
    with pytest.raises(UsageError, match="'paris' is not in the text"):
        explain(tagger, TEXTS[0], ExplainConfig(at="paris"))
    with pytest.raises(UsageError, match="unknown target label 'B-ORG'"):
        explain(tagger, TEXTS[0], ExplainConfig(at="london", target="B-ORG"))
    with pytest.raises(UsageError, match="not a token of the text"):
        explain(tagger, TEXTS[0], ExplainConfig(at=0))  # [CLS]
    with pytest.raises(UsageError, match="is the explained label itself"):
        explain(tagger, TEXTS[0], ExplainConfig(at="london", contrast="B-LOC"))
    one = explain(tagger, TEXTS[0], ExplainConfig(method="grad-x-input", at="london"))
    assert one.target.label == "B-LOC" and one.prediction.label == "B-LOC" and len(one.prediction.scores) == 5


def test_many_texts_in_order(tagger: TextModel) -> None:
    got = list(explain_tokens_many(tagger, [TEXTS[1], "", TEXTS[0]], ExplainConfig(method="grad-x-input")))
    assert [len(g.targets) for g in got if not isinstance(g, Exception)] == [4, 3]
    assert isinstance(got[1], Exception) and "empty" in str(got[1])


def test_a_per_token_model_without_a_lookup_is_refused(tmp_path: Path) -> None:
    """Scores read straight from the ids (no embedding lookup to split): exit 3, one line."""
    nodes = [helper.make_node("Cast", ["input_ids"], ["f"], to=TensorProto.FLOAT),
             helper.make_node("Unsqueeze", ["f", "axes"], ["u"]),
             helper.make_node("Mul", ["u", "w"], ["logits"])]
    graph = helper.make_graph(nodes, "ids-tagger", [helper.make_tensor_value_info("input_ids", TensorProto.INT64,
                                                                                   ["batch", "seq"])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "seq", 3])],
                              [numpy_helper.from_array(np.array([2], np.int64), "axes"),
                               numpy_helper.from_array(np.ones(3, np.float32), "w")])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    onnx.checker.check_model(proto)
    with pytest.raises(ModelError) as err:
        load_model(tiny.write_model_dir(tmp_path, proto))
    assert err.value.exit_code == 3 and "\n" not in str(err.value)


def matrix_example() -> TokenTargets:
    """Two targets over 'ada <b>met</b> rome' (the HTML view must escape the text)."""
    text = "ada <b>met</b> rome"
    spans = (Span("[CLS]", 0, 0, 0.0, True), Span("ada", 0, 3, 0.0, False), Span("<b>met</b>", 4, 14, 0.0, False),
             Span("rome", 15, 19, 0.0, False), Span("[SEP]", 0, 0, 0.0, True))

    def one(label: str, scores: tuple[float, ...], value: float, delta: float) -> Explanation:
        return Explanation(
            text=text, model="tagger", method="ig", backend="graph", reduce="sum", target=Label(1, label),
            prediction=Prediction(1, label, (0.0, 1.0)), target_value=value,
            tokens=tuple(replace(s, score=v) for s, v in zip(spans, scores, strict=True)), words=None,
            baseline_value=0.5, convergence_delta=delta,
            provenance=Provenance(score="logit", batch_size=64, forward_passes=2, device="cpu", baseline="pad"),
            notes=(), task="per-token")

    return TokenTargets(
        text=text, model="tagger", method="ig", predicted=("O", "B-PER", "O", "B-LOC", "O"),
        targets=(TokenTarget("ada", 0, 3, (1,), "PER", None, one("PER", (0.0, 2.0, -0.5, 0.25, 0.0), 3.0, 0.001)),
                 TokenTarget("rome", 15, 19, (3,), "LOC", "O", one("LOC rather than O", (0.0, 0.125, 1.0, -4.0, 0.0),
                                                                 -2.0, -0.25))),
        notes=("careful",))


def test_terminal_view_golden() -> None:
    assert render_terminal(matrix_example()) == (
        "model tagger | method ig (sum) | backend graph | 2 target(s)\n"
        "tags: ada/B-PER <b>met</b>/O rome/B-LOC\n"
        "1. PER 'ada' (tokens 1): f(x) = 3 (logit)   completeness delta +0.001\n"
        "   strongest: ada +2.000, <b>met</b> -0.500, rome +0.250\n"
        "2. LOC rather than O 'rome' (tokens 3): f(x) = -2 (logit)   completeness delta -0.25\n"
        "   strongest: rome -4.000, <b>met</b> +1.000, ada +0.125\n"
        "note: careful\n")


def test_json_view_golden() -> None:
    doc = json.loads(render_json(matrix_example()))
    assert doc == {"schema_version": 2, "per_token": {
        "text": "ada <b>met</b> rome", "model": "tagger", "method": "ig", "backend": "graph", "reduce": "sum",
        "tokens": [{"text": "[CLS]", "start": 0, "end": 0, "special": True, "predicted": "O"},
                   {"text": "ada", "start": 0, "end": 3, "special": False, "predicted": "B-PER"},
                   {"text": "<b>met</b>", "start": 4, "end": 14, "special": False, "predicted": "O"},
                   {"text": "rome", "start": 15, "end": 19, "special": False, "predicted": "B-LOC"},
                   {"text": "[SEP]", "start": 0, "end": 0, "special": True, "predicted": "O"}],
        "targets": [{"text": "ada", "start": 0, "end": 3, "positions": [1], "label": "PER", "contrast": None,
                     "target_value": 3.0, "baseline_value": 0.5, "convergence_delta": 0.001,
                     "scores": [0.0, 2.0, -0.5, 0.25, 0.0]},
                    {"text": "rome", "start": 15, "end": 19, "positions": [3], "label": "LOC", "contrast": "O",
                     "target_value": -2.0, "baseline_value": 0.5, "convergence_delta": -0.25,
                     "scores": [0.0, 0.125, 1.0, -4.0, 0.0]}],
        "settings": {"score": "logit", "batch_size": 64, "forward_passes": 2, "device": "cpu", "baseline": "pad"},
        "notes": ["careful"]}}
    assert matrix_example().matrix == ((0.0, 2.0, -0.5, 0.25, 0.0), (0.0, 0.125, 1.0, -4.0, 0.0))


def test_html_view_golden_row() -> None:
    page = render_html(matrix_example())
    assert "<b>" not in page and "&lt;b&gt;met&lt;/b&gt;" in page and "<script" not in page
    row = page.split("<tr>")[3].split("</table>")[0]  # the second target's row
    assert row == (
        "<th class=target>LOC rather than O &#x27;rome&#x27;<br><small>f(x) -2</small><br><small>delta -0.25"
        "</small></th>"
        '<td style="background:#ffffff;color:#000000" title="LOC rather than O &#x27;rome&#x27; &lt;- [CLS]: +0">'
        "+0</td>"
        f'<td style="background:{palette.hex_of(palette.mix(0.125, 4.0))};color:#000000" '
        'title="LOC rather than O &#x27;rome&#x27; &lt;- ada: +0.125">+0.125</td>'
        f'<td style="background:{palette.hex_of(palette.mix(1.0, 4.0))};color:#000000" '
        'title="LOC rather than O &#x27;rome&#x27; &lt;- &lt;b&gt;met&lt;/b&gt;: +1">+1</td>'
        f'<td style="background:{palette.hex_of(palette.AGAINST)};'
        f'color:{palette.hex_of(palette.ink(palette.AGAINST))}" '
        'title="LOC rather than O &#x27;rome&#x27; &lt;- rome: -4">-4</td>'
        '<td style="background:#ffffff;color:#000000" title="LOC rather than O &#x27;rome&#x27; &lt;- [SEP]: +0">'
        "+0</td></tr>")


def test_batch_writes_one_record_per_text_with_its_matrix(tagger: TextModel, tmp_path: Path) -> None:
    from blackbox_sal.jobs.batch import run_batch
    from blackbox_sal.jobs.datasets import Columns

    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps({"id": f"r{k}", "text": t}) + "\n" for k, t in enumerate(TEXTS)))
    cfg = ExplainConfig(method="grad-x-input")
    summary = run_batch(tagger, source, tmp_path / "out.jsonl", cfg, Columns(id="id"))
    assert (summary.explained, summary.failed) == (2, 0)
    records = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    for record, text in zip(records, TEXTS, strict=True):
        want = explain_tokens(tagger, text, cfg)
        assert [t["scores"] for t in record["per_token"]["targets"]] == [list(row) for row in want.matrix]


def test_the_server_explains_every_target_or_the_one_asked(tagger: TextModel) -> None:
    pytest.importorskip("starlette", reason="the server needs the [serve] extra")
    from starlette.testclient import TestClient

    from blackbox_sal.server.app import Server

    server = Server({"tagger": tagger})
    try:
        client = TestClient(server.app)
        reply = client.post("/v1/models/tagger:explain", json={"instances": [TEXTS[0]],
                                                               "parameters": {"method": "grad-x-input"}})
        assert reply.status_code == 200
        matrix = [t["scores"] for t in reply.json()["explanations"][0]["per_token"]["targets"]]
        want = explain_tokens(tagger, TEXTS[0], ExplainConfig(method="grad-x-input")).matrix
        assert matrix == [list(row) for row in want]
        reply = client.post("/v1/models/tagger:explain", json={
            "instances": [{"text": TEXTS[0], "target": "B-LOC"}],
            "parameters": {"method": "grad-x-input", "at": "london", "contrast": "O"}})
        one = reply.json()["explanations"][0]
        single = explain(tagger, TEXTS[0], ExplainConfig(method="grad-x-input", at="london", target="B-LOC",
                                                          contrast="O"))
        assert one["target"]["label"] == "B-LOC rather than O" and one["target_value"] == single.target_value
        reply = client.post("/v1/models/tagger:explain", json={"instances": [TEXTS[0]], "parameters": {"at": "rome"}})
        assert reply.status_code == 400 and "'rome' is not in the text" in reply.text
        reply = client.post("/v1/models/tagger:predict", json={"instances": [TEXTS[0]]})
        assert reply.status_code == 400 and "predicts a label per token" in reply.text  # never a flattened arg-max
    finally:
        server.stop()


def one_row_tagger(table: np.ndarray, w: np.ndarray) -> onnx.ModelProto:
    """logits [1, seq, L] = (E @ W) reshaped to one row by the ids' length: a batch axis that is
    declared free but takes one row (as khmersm's export), scores linear in the embeddings."""
    nodes = [helper.make_node("Gather", ["table", "input_ids"], ["E"]),
             helper.make_node("Squeeze", ["E", "zero"], ["one"]),  # [seq, D]: fails on two rows
             helper.make_node("MatMul", ["one", "W"], ["flat"]),
             helper.make_node("Unsqueeze", ["flat", "zero"], ["logits"])]
    inits = [numpy_helper.from_array(table, "table"), numpy_helper.from_array(w, "W"),
             numpy_helper.from_array(np.array([0], np.int64), "zero")]
    graph = helper.make_graph(nodes, "one-row", [helper.make_tensor_value_info("input_ids", TensorProto.INT64,
                                                                               ["batch", "seq"])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, "seq", w.shape[1]])],
                              inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    onnx.checker.check_model(proto)
    return proto


def test_a_tagger_that_takes_one_row_runs_one_row_at_a_time(tmp_path: Path) -> None:
    table = tiny.table(4, seed=5)
    w = np.random.default_rng(1).normal(size=(4, 3)).astype(np.float32)
    model = load_model(tiny.write_model_dir(tmp_path, one_row_tagger(table, w), labels=["O", "B-X", "I-X"]))
    assert model.task == "per-token" and model.fixed_batch == 1
    assert any("fails on two rows" in n for n in model.notes)
    text = "the film was good"
    ids = tiny.tokenizer().encode(text).ids
    for method in ("grad-x-input", "ig"):
        result = explain_tokens(model, text, ExplainConfig(method=method, steps=4))
        predicted = (table[ids] @ w).argmax(1)
        spans = entities([int(p) for p in predicted], ["O", "B-X", "I-X"], range(len(ids)))
        assert len(spans) >= 1 and [t.positions for t in result.targets] == [tuple(s) for s in spans]
        assert {t.label for t in result.targets} == {"X"}
        for t in result.targets:  # linear scores: grad x input = x_i . W[:, label] on the target's own tokens
            want = np.zeros(len(ids))
            for i, label in zip(t.positions, [int(predicted[i]) for i in t.positions], strict=True):
                want[i] += table[ids[i]] @ w[:, label]
            if method == "grad-x-input":
                np.testing.assert_allclose(scores(t.explanation), want, rtol=1e-5, atol=1e-6)
            else:  # completeness against the pad baseline (row 0 is zero): IG is exact on a linear function
                assert abs(t.explanation.convergence_delta or 0.0) < 1e-5


@pytest.mark.parametrize("method", ["grad-x-input", "ig"])
def test_finite_differences_of_k_targets_share_one_set_of_rows(tagger: TextModel, method: str) -> None:
    """k targets perturb the same points: their keyed Forward requests are sent once, so the
    k targets cost the rows of one (plus their k prediction rows), with the same results."""
    from blackbox_sal.api.per_token import token_targets
    from blackbox_sal.engine.runner import Runner

    cfg = ExplainConfig(method=method, backend="fd", steps=4).validated()
    runner = Runner(tagger, rows=64)
    rows: list[int] = []

    def answer(request: Any) -> np.ndarray:
        rows.append(request.n)
        return runner.execute([request])[0]

    packed = drive(token_targets(tagger, TEXTS[1], cfg), answer)
    k = len(packed.targets)
    single = explain(tagger, TEXTS[1], replace(cfg, at=packed.targets[0].text))
    per_target = single.provenance.forward_passes
    b = 2 if method == "ig" else 1  # each target's prediction rows: f(x), and f(x') for IG
    assert k == 4 and sum(rows) == 1 + k * b + (per_target - b)  # the finding row, k predictions, one target's fd
    for t in packed.targets:
        alone = explain(tagger, TEXTS[1], replace(cfg, at=t.text))
        np.testing.assert_allclose(scores(t.explanation), scores(alone), rtol=1e-6, atol=1e-9)


def test_a_prepared_folder_explains_the_same_matrix(tagger: TextModel, tmp_path: Path) -> None:
    """The edge install's form (inputs_embeds, the gradient graph beside it) keeps the task."""
    from blackbox_sal.gradient_graph.store import prepare

    folder = prepare(tagger, tmp_path / "prepared")
    ready = load_model(folder)
    assert ready.task == "per-token" and ready.output == tagger.output
    cfg = ExplainConfig(method="grad-x-input", backend="graph")
    assert explain_tokens(ready, TEXTS[0], cfg).matrix == explain_tokens(tagger, TEXTS[0], cfg).matrix
