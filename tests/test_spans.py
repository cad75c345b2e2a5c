"""Answer spans (extractive question answering): the span found, the three targets explained
and packed, against PyTorch autograd on the same weights; the views as golden strings."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

from blackbox_sal.api.spans import answer_span, best_spans, explain_answer, given_span, together, token_parts
from blackbox_sal.model.files import default_model_path
from blackbox_sal.model.loading import load_model
from blackbox_sal.model.text_model import TextModel
from blackbox_sal.render import render_html, render_json, render_terminal
from blackbox_sal.text.tokenization import tokenize_pair
from blackbox_sal.text.words import Span
from blackbox_sal.vocabulary.config import ExplainConfig
from blackbox_sal.vocabulary.errors import UsageError
from blackbox_sal.vocabulary.result import AnswerSpan, Explanation, Label, Prediction, Provenance, SpanCandidate
from blackbox_sal.vocabulary.runs import All, ArrayPoints, Forward, Gradient, PathJvp, Request, Work, ask, drive

ROOT = Path(__file__).resolve().parent.parent
QUESTION = "who built the eiffel tower ?"
CONTEXT = "the eiffel tower was built by gustave eiffel in 1889 ."


def _build_qa() -> ModuleType:
    spec = importlib.util.spec_from_file_location("build_qa", ROOT / "models" / "build_qa.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _has_torch() -> bool:
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError:
        return False
    return True


#: ``models/build_qa.py --committed``: the export and PyTorch's answers on QUESTION and CONTEXT,
#: read where torch is not installed (CI); with torch the tests build the model afresh instead
COMMITTED = ROOT / "models" / "tiny-qa"


@pytest.fixture(scope="module")
def qa_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not _has_torch():
        return COMMITTED
    return Path(_build_qa().build(tmp_path_factory.mktemp("tiny-qa")))


@pytest.fixture(scope="module")
def qa(qa_folder: Path) -> TextModel:
    return load_model(qa_folder)


def _torch_reference(folder: Path, model: TextModel, question: str, context: str) -> dict[str, Any]:
    """PyTorch's start and end logits on the pair, and for each target (start i, end j, their
    sum) d target / d word embeddings [S, D], with the word embeddings [S, D]: computed now with
    torch, or read from the committed ``reference.npz`` without it."""
    assert (question, context) == (QUESTION, CONTEXT)  # the pair the committed reference holds
    if _has_torch():
        got = _build_qa().reference(folder, question, context)
    else:
        with np.load(folder / "reference.npz") as stored:
            got = {k: stored[k] for k in stored.files}
    tokens = tokenize_pair(model.tokenizer, question, context, model.max_length)
    assert np.array_equal(tokens.ids, got["ids"])
    i, j = (int(k) for k in got["span"])
    return {"start": got["start"], "end": got["end"], "span": (i, j), "emb": got["emb"], "tokens": tokens,
            "grads": {n: got[f"grad_{n}"] for n in ("start", "end", "span")},
            "parts": token_parts(tokens, len(question) + 1)}


def test_the_committed_folder_is_what_the_build_writes(qa_folder: Path) -> None:
    """models/tiny-qa (read without torch) holds the same export and the same PyTorch answers
    as a fresh ``build_qa.py`` build: the committed reference cannot drift from the script."""
    if not _has_torch():
        pytest.skip("needs torch and transformers to rebuild the model")
    fresh = _build_qa().reference(qa_folder)
    with np.load(COMMITTED / "reference.npz") as stored:
        assert sorted(stored.files) == sorted(fresh)
        for k in stored.files:
            np.testing.assert_allclose(stored[k], fresh[k], rtol=1e-5, atol=1e-6, err_msg=k)
    for name in ("tokenizer.json", "config.json"):
        assert (COMMITTED / name).read_bytes() == (qa_folder / name).read_bytes()
    committed, built = load_model(COMMITTED), load_model(qa_folder)
    tokens = tokenize_pair(built.tokenizer, QUESTION, CONTEXT, built.max_length)
    ids, types, mask = built.pad(tokens.ids, tokens.type_ids)
    np.testing.assert_allclose(committed.forward(committed.embed(ids)[None], ids, types, mask),
                               built.forward(built.embed(ids)[None], ids, types, mask), rtol=1e-6, atol=1e-6)


def test_the_loader_joins_start_and_end_logits(qa: TextModel, qa_folder: Path) -> None:
    ref = _torch_reference(qa_folder, qa, QUESTION, CONTEXT)
    assert qa.task == "answer-span" and qa.output == "span_logits"
    ids, types, mask = qa.pad(ref["tokens"].ids, ref["tokens"].type_ids)
    joined = qa.forward(qa.embed(ids)[None], ids, types, mask)[0]
    np.testing.assert_allclose(joined, np.concatenate([ref["start"], ref["end"]]), rtol=1e-5, atol=1e-5)


def test_the_chosen_span_is_the_brute_force_best(qa: TextModel, qa_folder: Path) -> None:
    ref = _torch_reference(qa_folder, qa, QUESTION, CONTEXT)
    s, e, parts = ref["start"], ref["end"], ref["parts"]
    context = [k for k, p in enumerate(parts) if p == "context"]
    best = max(((s[i] + e[j], i, j) for i in context for j in context if i <= j < i + 30), key=lambda t: t[0])
    got = explain_answer(qa, QUESTION, CONTEXT, ExplainConfig(method="saliency"))
    assert (got.start, got.end) == (best[1], best[2]) == ref["span"]
    assert got.score == pytest.approx(best[0], rel=1e-5)
    assert got.answer == CONTEXT[got.answer_start:got.answer_end]
    assert got.candidates[0].score == pytest.approx(got.score) and len(got.candidates) == 5
    assert [c.score for c in got.candidates] == sorted((c.score for c in got.candidates), reverse=True)
    # a shorter limit: the best span of at most 2 tokens, brute force again
    short = explain_answer(qa, QUESTION, CONTEXT, ExplainConfig(method="saliency", max_answer_tokens=2))
    best2 = max(((s[i] + e[j], i, j) for i in context for j in context if i <= j < i + 2), key=lambda t: t[0])
    assert (short.start, short.end) == (best2[1], best2[2]) and short.end - short.start < 2


@pytest.mark.parametrize(("backend", "tolerance"), [("graph", 1e-5), ("fd", 1e-3)])
def test_the_three_targets_equal_autograd(qa: TextModel, qa_folder: Path, backend: str, tolerance: float) -> None:
    ref = _torch_reference(qa_folder, qa, QUESTION, CONTEXT)
    got = explain_answer(qa, QUESTION, CONTEXT, ExplainConfig(method="grad-x-input", backend=backend))
    assert [e.target.label for e in got.explanations] == ["start", "end", "span"]
    assert {e.backend for e in got.explanations} == {backend}
    for e in got.explanations:
        want = (ref["grads"][e.target.label] * ref["emb"]).sum(axis=1)
        scores = np.array([t.score for t in e.tokens])
        assert np.max(np.abs(scores - want)) <= tolerance * np.max(np.abs(want))
    i, j = ref["span"]
    values = [e.target_value for e in got.explanations]
    np.testing.assert_allclose(values, [ref["start"][i], ref["end"][j], ref["start"][i] + ref["end"][j]], rtol=1e-5)


def test_integrated_gradients_complete_each_target_and_the_span_is_their_sum(qa: TextModel) -> None:
    got = explain_answer(qa, QUESTION, CONTEXT, ExplainConfig(method="ig", steps=64))
    for e in got.explanations:
        assert e.baseline_value is not None and e.convergence_delta is not None
        total = sum(t.score for t in e.tokens)
        assert total == pytest.approx(e.target_value - e.baseline_value, abs=1e-4)
        assert abs(e.convergence_delta) < 1e-4 * max(1.0, abs(e.target_value - e.baseline_value))
    start, end, span = ([t.score for t in e.tokens] for e in got.explanations)
    np.testing.assert_allclose(span, np.add(start, end), atol=1e-5)


def test_the_three_targets_share_runs(qa: TextModel) -> None:
    """The targets' requests go out together: one Forward for the span, then each round one
    All holding a request of each target (the engine packs them into one run)."""
    cfg = ExplainConfig(method="grad-x-input").validated()
    seen: list[Request | All] = []
    work = answer_span(qa, QUESTION, CONTEXT, cfg)
    asked = next(work)
    try:
        while True:
            seen.append(asked)
            requests = asked.requests if isinstance(asked, All) else (asked,)
            answers = [_answer(qa, r) for r in requests]
            asked = work.send(answers if isinstance(asked, All) else answers[0])
    except StopIteration as stop:
        result = stop.value
    assert isinstance(seen[0], Forward)
    rounds = [a for a in seen[1:] if isinstance(a, All)]
    assert len(rounds) == len(seen) - 1 >= 1  # every later round gathers the three targets
    assert {len(a.requests) for a in rounds} == {3}
    gradient_rounds = [a for a in rounds if all(isinstance(r, Gradient | PathJvp) for r in a.requests)]
    assert len(gradient_rounds) == 1
    seeds = np.stack([r.weights[0] for r in gradient_rounds[0].requests
                      if isinstance(r, Gradient | PathJvp)])
    n = seeds.shape[1] // 2
    assert np.array_equal(seeds[2], seeds[0] + seeds[1])
    assert np.flatnonzero(seeds[0]).tolist() == [result.start] and np.flatnonzero(seeds[1]).tolist() == [n + result.end]


def _answer(model: TextModel, r: Request) -> np.ndarray:
    """A request answered row by row with the model and its gradient graph (no packing)."""
    from blackbox_sal.engine.runner import Runner

    return Runner(model, rows=64).execute([r])[0]


def test_together_runs_works_side_by_side_in_order() -> None:
    def work(k: int, rounds: int) -> Work[list[float]]:
        got = []
        for r in range(rounds):
            got.append(float((yield from ask(Forward(None, ArrayPoints(np.full((1, 1, 1), 10.0 * k + r)))))[0, 0]))
        return got

    seen: list[int] = []

    def answer(r: Request) -> np.ndarray:
        return np.asarray(r.points.take(0, 1))[:, 0, :] if isinstance(r, Forward) else np.zeros(0)

    def counting(w: Work[list[list[float]]]) -> Work[list[list[float]]]:
        asked = next(w)
        try:
            while True:
                seen.append(len(asked.requests) if isinstance(asked, All) else 1)
                asked = w.send((yield asked))
        except StopIteration as stop:
            return stop.value

    assert drive(counting(together([work(0, 1), work(1, 3), work(2, 2)])), answer) == [
        [0.0], [10.0, 11.0, 12.0], [20.0, 21.0]]
    assert seen == [3, 2, 1]  # finished works drop out of the rounds


def test_a_given_answer_by_text_or_by_tokens(qa: TextModel) -> None:
    by_text = explain_answer(qa, QUESTION, CONTEXT, ExplainConfig(method="saliency", answer="Gustave Eiffel"))
    assert (by_text.answer, by_text.chosen) == ("gustave eiffel", "given")
    assert by_text.explanations[2].target_value == pytest.approx(by_text.start_logit + by_text.end_logit)
    by_index = explain_answer(qa, QUESTION, CONTEXT, ExplainConfig(method="saliency",
                                                                   answer=f"{by_text.start}:{by_text.end}"))
    assert (by_index.start, by_index.end, by_index.answer) == (by_text.start, by_text.end, "gustave eiffel")
    tokens = tokenize_pair(qa.tokenizer, QUESTION, CONTEXT, None)
    parts = token_parts(tokens, len(QUESTION) + 1)
    assert parts[0] is None and parts[1] == "question" and parts[-1] is None
    with pytest.raises(UsageError, match="is not in the context"):
        given_span(tokens, parts, CONTEXT, len(QUESTION) + 1, "the louvre")
    with pytest.raises(UsageError, match=r"answer tokens 1:2 are not a span of context tokens \(the context's "
                                         r"tokens are 8 to 18\)"):
        given_span(tokens, parts, CONTEXT, len(QUESTION) + 1, "1:2")


def test_best_spans_respects_order_length_and_the_context() -> None:
    start = np.array([9.0, 1.0, 0.0, 3.0, 0.0])
    end = np.array([9.0, 0.0, 2.0, 0.0, 5.0])
    allowed = np.array([False, True, True, True, True])
    assert best_spans(start, end, allowed, 30, 3) == [(3, 4), (1, 4), (2, 4)]
    # at most 2 tokens: 3..4 scores 8, 4..4 5, then 1..2 and 3..3 tie at 3 (the earlier start first)
    assert best_spans(start, end, allowed, 2, 4) == [(3, 4), (4, 4), (1, 2), (3, 3)]
    # a span never crosses a token that is not allowed (3): 1..4 is out
    assert best_spans(start, end, np.array([False, True, True, False, True]), 30, 9) == [
        (4, 4), (1, 2), (2, 2), (1, 1)]


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "blackbox_sal", *args], capture_output=True, text=True,
                          cwd=ROOT, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "NO_COLOR": "1"},
                          timeout=120)


def test_cli_explains_a_span_and_refuses_what_does_not_apply(qa_folder: Path, tmp_path: Path) -> None:
    done = _cli("explain", "--model", str(qa_folder), QUESTION, "--context", CONTEXT, "--method", "grad-x-input",
                "--format", "json")
    assert done.returncode == 0, done.stderr
    _valid(json.loads(done.stdout))
    doc = json.loads(done.stdout)["answer_span"]
    assert doc["answer"]["chosen"] == "best" and set(doc["explanations"]) == {"start", "end", "span"}
    assert {t["part"] for t in doc["tokens"]} == {"question", "context", None}
    no_context = _cli("explain", "--model", str(qa_folder), QUESTION)
    assert no_context.returncode == 2 and no_context.stderr.count("\n") == 1
    assert "give the question as the text and the context with --context" in no_context.stderr
    # a QA export missing its end logits is a per-token model (one score per token), not a QA
    # model: asked for an answer span, it is refused in one line (exit 2), never half-explained
    import onnx

    broken = tmp_path / "broken-qa"
    shutil.copytree(qa_folder, broken)
    proto = onnx.load(broken / "model.onnx")
    kept = [o for o in proto.graph.output if o.name != "end_logits"]
    del proto.graph.output[:]
    proto.graph.output.extend(kept)
    onnx.save(proto, broken / "model.onnx")
    refused = _cli("explain", "--model", str(broken), QUESTION, "--context", CONTEXT)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1
    assert "needs a question-answering model (start and end logits per token)" in refused.stderr
    assert "is a per-token model" in refused.stderr


# Golden strings of the three views, on a hand-made result (the numbers are exact).
def _example() -> AnswerSpan:
    question, context = "who <b>?", "it was gustave eiffel ."
    text = question + "\n" + context
    shift = len(question) + 1
    pieces = [("[CLS]", 0, 0, None), ("who", 0, 3, "question"), ("<b>?", 4, 8, "question"), ("[SEP]", 0, 0, None),
              ("it", shift, shift + 2, "context"), ("was", shift + 3, shift + 6, "context"),
              ("gustave", shift + 7, shift + 14, "context"), ("eiffel", shift + 15, shift + 21, "context"),
              (".", shift + 22, shift + 23, "context"), ("[SEP]", 0, 0, None)]
    scores = {"start": [0.0, 0.25, -0.5, 0.0, 0.0, 0.125, 1.5, 0.0, -0.25, 0.0],
              "end": [0.0, -0.125, 0.0, 0.0, 0.0, 0.0, 0.25, 1.0, 0.0, 0.0]}
    scores["span"] = [a + b for a, b in zip(scores["start"], scores["end"], strict=True)]
    values = {"start": 2.0, "end": 1.5, "span": 3.5}

    def explained(k: int, name: str) -> Explanation:
        return Explanation(
            text=text, model="qa", method="ig", backend="graph", reduce="sum", target=Label(k, name, values[name]),
            prediction=Prediction(6, "gustave eiffel", ()), target_value=values[name],
            tokens=tuple(Span(t, a, b, s, p is None) for (t, a, b, p), s in zip(pieces, scores[name], strict=True)),
            words=None, baseline_value=values[name] - sum(scores[name]), convergence_delta=0.0 if k else 1e-6,
            provenance=Provenance(score="logit", batch_size=64, forward_passes=2, device="cpu", baseline="pad"),
            notes=("careful",), task="answer-span")

    return AnswerSpan(
        question=question, context=context, parts=tuple(p for *_, p in pieces), start=6, end=7,
        answer="gustave eiffel", answer_start=7, answer_end=21, start_logit=2.0, end_logit=1.5, chosen="best",
        max_answer_tokens=30, candidates=(SpanCandidate(6, 7, "gustave eiffel", 3.5),
                                          SpanCandidate(6, 6, "gustave", 2.75)),
        explanations=(explained(0, "start"), explained(1, "end"), explained(2, "span")))


TERMINAL = """\
model qa | method ig (sum) | backend graph | answer span
question: 'who <b>?'
answer: 'gustave eiffel'   tokens 6..7, the best span (at most 30 tokens)
score: start 2 + end 1.5 = 3.5 (logits)
other spans: 'gustave' 2.75
completeness delta: start +1e-06, end +0, span +0

  question           start     end    span
  who               +0.250  -0.125  +0.125
  <b>?              -0.500  +0.000  -0.500

  context            start     end    span
  it                +0.000  +0.000  +0.000
  was               +0.125  +0.000  +0.125
> gustave           +1.500  +0.250  +1.750
> eiffel            +0.000  +1.000  +1.000
  .                 -0.250  +0.000  -0.250
note: careful
"""


def test_terminal_golden() -> None:
    assert render_terminal(_example()) == TERMINAL


SCHEMA = json.loads((ROOT / "blackbox_sal" / "render" / "explanation.schema.json").read_text(encoding="utf-8"))


def _valid(doc: dict[str, Any]) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.validate(doc, SCHEMA, cls=jsonschema.Draft202012Validator)


def test_json_golden() -> None:
    doc = json.loads(render_json(_example()))
    _valid(doc)
    assert doc["schema_version"] == 2
    body = doc["answer_span"]
    assert body["answer"] == {"text": "gustave eiffel", "start_char": 7, "end_char": 21, "start_token": 6,
                              "end_token": 7, "start_logit": 2.0, "end_logit": 1.5, "score": 3.5, "chosen": "best",
                              "max_answer_tokens": 30}
    assert body["candidates"] == [{"start_token": 6, "end_token": 7, "text": "gustave eiffel", "score": 3.5},
                                  {"start_token": 6, "end_token": 6, "text": "gustave", "score": 2.75}]
    assert body["tokens"][2] == {"token": "<b>?", "part": "question", "start": 4, "end": 8, "special": False,
                                 "in_answer": False, "start_score": -0.5, "end_score": 0.0, "span_score": -0.5}
    assert body["tokens"][7] == {"token": "eiffel", "part": "context", "start": 15, "end": 21, "special": False,
                                 "in_answer": True, "start_score": 0.0, "end_score": 1.0, "span_score": 1.0}
    assert body["tokens"][3] == {"token": "[SEP]", "part": None, "start": 0, "end": 0, "special": True,
                                 "in_answer": False, "start_score": 0.0, "end_score": 0.0, "span_score": 0.0}
    assert body["context"][7:21] == "gustave eiffel"
    assert [body["explanations"][n]["target"]["label"] for n in ("start", "end", "span")] == ["start", "end", "span"]
    assert body["explanations"]["span"]["target_value"] == 3.5


def test_html_golden() -> None:
    page = render_html(_example())
    assert "<h2>question</h2>" in page and "<h2>context</h2>" in page
    assert page.index("<h2>question</h2>") < page.index(">who<") < page.index("<h2>context</h2>") < \
        page.index(">gustave<")
    assert "&lt;b&gt;?" in page and "<b>?" not in page
    # gustave: the span's peak (+1.75), the full blue, underlined as part of the answer, its three scores on hover
    assert ('<span class=tok style="background:#2166ac;color:#ffffff;text-decoration:underline" '
            'title="start +1.5, end +0.25, span +1.75">gustave</span>') in page
    assert "<tr><td>span</td><td class=num>3.5</td><td class=num>1.25</td><td class=num>+0</td></tr>" in page
    assert "[CLS]" not in page and "careful" in page and "<script" not in page


def _same_scores(got: dict[str, Any], want: AnswerSpan) -> None:
    """A JSON answer span (batch, server) holds what the API computed, up to the packing's float noise."""
    assert got["answer"]["start_token"] == want.start and got["answer"]["end_token"] == want.end
    for name, e in zip(("start", "end", "span"), want.explanations, strict=True):
        np.testing.assert_allclose([t[f"{name}_score"] for t in got["tokens"]], [t.score for t in e.tokens],
                                   atol=1e-5)


def test_batch_takes_a_question_column(qa: TextModel, tmp_path: Path) -> None:
    from blackbox_sal.jobs.batch import run_batch
    from blackbox_sal.jobs.datasets import Columns

    rows = [{"q": QUESTION, "text": CONTEXT}, {"q": "when was it built ?", "text": "it was built in 1889 ."},
            {"q": "who ?", "text": ""}]
    source = tmp_path / "rows.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    cfg = ExplainConfig(method="grad-x-input", progress=False)
    summary = run_batch(qa, source, tmp_path / "out.jsonl", cfg, Columns(question="q"))
    assert (summary.rows, summary.explained, summary.failed) == (3, 2, 1)
    lines = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text(encoding="utf-8").splitlines()]
    lines = [line for line in lines if "row" in line]
    for line, row in zip(lines[:2], rows[:2], strict=True):
        _same_scores(line["answer_span"], explain_answer(qa, row["q"], row["text"], cfg))
    assert lines[2]["error"] == "the text is empty" and lines[2]["exit_code"] == 2


def test_server_explains_a_question_instance(qa: TextModel) -> None:
    pytest.importorskip("starlette", reason="the server needs the [serve] extra")
    pytest.importorskip("httpx")
    from starlette.testclient import TestClient

    from blackbox_sal.server.app import Server

    server = Server({"qa": qa})
    try:
        client = TestClient(server.app)
        got = client.post("/v1/models/qa:explain", json={
            "instances": [{"question": QUESTION, "context": CONTEXT, "id": 7}],
            "parameters": {"method": "grad-x-input", "max_answer_tokens": 4}})
        assert got.status_code == 200, got.text
        body = got.json()["explanations"][0]
        want = explain_answer(qa, QUESTION, CONTEXT, ExplainConfig(method="grad-x-input", max_answer_tokens=4))
        _same_scores(body["answer_span"], want)
        assert body["answer_span"]["answer"]["max_answer_tokens"] == 4
        bad = client.post("/v1/models/qa:explain", json={"instances": [{"question": QUESTION, "text": CONTEXT}]})
        assert bad.status_code == 400
        assert bad.json()["error"] == ('instance 0 has fields text beside a question: a question instance is '
                                       '{"question", "context", "answer", "id"}')
        plain = client.post("/v1/models/qa:explain", json={"instances": [QUESTION]})
        assert plain.status_code == 400 and "--context" in plain.json()["error"]
    finally:
        server.stop()


def test_a_prepared_qa_folder_explains_the_same_span(qa: TextModel, tmp_path: Path) -> None:
    from blackbox_sal.gradient_graph.store import prepare

    prepared = load_model(prepare(qa, tmp_path / "prepared"))
    assert (prepared.task, prepared.output) == ("answer-span", "span_logits")
    cfg = ExplainConfig(method="grad-x-input")
    got, want = (explain_answer(m, QUESTION, CONTEXT, cfg) for m in (prepared, qa))
    assert (got.start, got.end, got.score) == (want.start, want.end, want.score)
    for e, f in zip(got.explanations, want.explanations, strict=True):
        assert [t.score for t in e.tokens] == [t.score for t in f.tokens]


def test_what_does_not_apply_to_a_span_is_refused(qa: TextModel) -> None:
    from blackbox_sal.api.explaining import explain

    with pytest.raises(UsageError, match="give the question as the text and the context with --context"):
        explain(qa, QUESTION)
    with pytest.raises(UsageError, match="choose the span with --answer, not --target"):
        explain_answer(qa, QUESTION, CONTEXT, ExplainConfig(target=3))
    with pytest.raises(UsageError, match="--score does not apply"):
        explain_answer(qa, QUESTION, CONTEXT, ExplainConfig(score="probability"))
    with pytest.raises(UsageError, match="--answer chooses the span of a question-answering model"):
        explain(load_model(default_model_path()), "a fine film", ExplainConfig(answer="film"))
    with pytest.raises(UsageError, match="it needs a question-answering model .* sentiment-cnn is a classification"):
        explain_answer(load_model(default_model_path()), QUESTION, CONTEXT)


def test_terminal_colours_each_token_by_its_span_score() -> None:
    coloured = render_terminal(_example(), color=True)
    # gustave is the span's peak (+1.75): the full blue #2166ac = (33, 102, 172), white ink
    assert "> \033[97;48;2;33;102;172mgustave         \033[0m  +1.500  +0.250  +1.750\n" in coloured
    # <b>? (-0.5) is 2/7 of the way from white to red #b2182b: 255 + (178 - 255) * 2/7 = 233, (189, 194)
    assert "  \033[30;48;2;233;189;194m<b>?            \033[0m  -0.500  +0.000  -0.500\n" in coloured
    assert "the span score's attribution" in coloured
    assert re.sub(r"\033\[[0-9;]*m", "", coloured).replace(
        "colour: the span score's attribution, █ blue for the answer, █ red against it; the strongest is full\n",
        "") == TERMINAL
