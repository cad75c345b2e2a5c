"""Targets named per instance (the server's KServe V1 :explain) and per row (batch): each
instance's or record's own ``target``, ``at``, ``contrast`` (and a question's ``answer``)
override the request's or the job's settings, are checked by the settings spec as those are,
and give exactly what the Python API gives with those settings; a bad value is that
instance's 400 (naming it) or that record's error line, never the job's end."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest

from blackbox_sal import ExplainConfig, explain, load_model
from blackbox_sal.api.per_token import explain_tokens
from blackbox_sal.api.spans import explain_answer
from blackbox_sal.jobs.batch import row_config, run_batch
from blackbox_sal.jobs.datasets import Columns, Row, read_rows
from blackbox_sal.model.text_model import TextModel
from blackbox_sal.render.json import document
from blackbox_sal.vocabulary.errors import UsageError

ROOT = Path(__file__).resolve().parents[1]
TEXT = "ada lovelace met alan turing in london ."
OTHER = "grace hopper visited new york and paris with marie curie today ."
QUESTION = "who built the eiffel tower ?"
CONTEXT = "the eiffel tower was built by gustave eiffel in 1889 ."
GXI = ExplainConfig(method="grad-x-input")


@pytest.fixture(scope="module")
def tagger() -> TextModel:
    return load_model(ROOT / "models" / "tiny-tagger")


@pytest.fixture(scope="module")
def qa() -> TextModel:
    return load_model(ROOT / "models" / "tiny-qa")


def _body(answer: dict[str, Any]) -> dict[str, Any]:
    """An answer without what the server adds (the producer, the instance's id)."""
    return {k: v for k, v in answer.items() if k not in ("producer", "id")}


# -- the rule both share -------------------------------------------------------------------------


def test_a_rows_own_settings_override_the_jobs_and_are_checked_by_the_spec() -> None:
    job = ExplainConfig(method="saliency", at="london", target="B-LOC", contrast="O").validated()
    assert row_config(Row(0, TEXT), job) is job  # nothing of its own: the job's
    own = row_config(Row(0, TEXT, target="B-PER", at=1, contrast="I-PER"), job)
    assert (own.method, own.target, own.at, own.contrast) == ("saliency", "B-PER", 1, "I-PER")
    with pytest.raises(UsageError, match="answer"):  # Text(blank=False) in the spec, as for --answer
        row_config(Row(0, CONTEXT, question=QUESTION, answer="  "), job)


# -- the server ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def client(tagger: TextModel, qa: TextModel) -> Any:
    pytest.importorskip("starlette", reason="the server needs the [serve] extra")
    from starlette.testclient import TestClient

    from blackbox_sal.server.app import Server

    server = Server({"tagger": tagger, "qa": qa})
    try:
        yield TestClient(server.app)
    finally:
        server.stop()


def test_instances_with_different_targets_in_one_request_equal_the_api(client: Any, tagger: TextModel) -> None:
    reply = client.post("/v1/models/tagger:explain", json={
        "instances": [
            {"text": TEXT, "at": "london", "target": "B-LOC", "contrast": "O", "id": "a"},
            {"text": TEXT, "at": 4},  # a token index, as a JSON number
            {"text": OTHER, "at": "new york"},
            TEXT,  # the request's parameters: every entity of the text (its matrix)
            {"text": OTHER, "contrast": "O"},  # every entity of the text, each against O
        ],
        "parameters": {"method": "grad-x-input"}})
    assert reply.status_code == 200, reply.text
    got = reply.json()["explanations"]
    assert got[0]["id"] == "a"
    for answer, text, cfg in zip(got[:3], [TEXT, TEXT, OTHER], [
            ExplainConfig(method="grad-x-input", at="london", target="B-LOC", contrast="O"),
            ExplainConfig(method="grad-x-input", at=4), ExplainConfig(method="grad-x-input", at="new york")],
            strict=True):
        assert _body(answer) == document(explain(tagger, text, cfg))
    assert got[0]["target"]["label"] == "B-LOC rather than O"
    assert got[2]["target"]["label"] == "B-LOC+I-LOC"  # "new york": two tokens, each its predicted label
    assert _body(got[3]) == document(explain_tokens(tagger, TEXT, GXI))
    assert _body(got[4]) == document(explain_tokens(tagger, OTHER, ExplainConfig(method="grad-x-input",
                                                                                 contrast="O")))
    assert [t["contrast"] for t in got[4]["per_token"]["targets"]] == ["O"] * 4


def test_an_instances_own_value_overrides_the_requests_parameter(client: Any, tagger: TextModel) -> None:
    reply = client.post("/v1/models/tagger:explain", json={
        "instances": [{"text": TEXT, "at": "alan turing"}, TEXT],
        "parameters": {"method": "grad-x-input", "at": "london", "contrast": "O"}})
    assert reply.status_code == 200, reply.text
    first, second = reply.json()["explanations"]
    assert _body(first) == document(explain(tagger, TEXT, ExplainConfig(method="grad-x-input", at="alan turing",
                                                                         contrast="O")))
    assert _body(second) == document(explain(tagger, TEXT, ExplainConfig(method="grad-x-input", at="london",
                                                                          contrast="O")))


@pytest.mark.parametrize(("instance", "message"), [
    ({"text": TEXT, "at": [4]}, "instance 1: at must be a label, an index or null, got [4]"),
    ({"text": TEXT, "contrast": True}, "instance 1: contrast must be a label, an index or null, got true"),
    ({"text": TEXT, "target": 1.5}, "instance 1: target must be a label, an index or null, got 1.5"),
    ({"text": TEXT, "where": 4}, "instance 1 has unknown fields where"),
    ({"question": QUESTION, "context": CONTEXT, "answer": " "},
     "instance 1: answer must be a text of the context, or token indices START:END"),
])
def test_a_bad_instance_is_a_400_naming_it(client: Any, instance: dict[str, Any], message: str) -> None:
    reply = client.post("/v1/models/tagger:explain", json={"instances": [TEXT, instance]})
    assert reply.status_code == 400
    assert reply.json() == {"error": message, "status": 400}


def test_a_value_the_text_refuses_is_that_instances_error(client: Any, tagger: TextModel) -> None:
    reply = client.post("/v1/models/tagger:explain", json={
        "instances": [{"text": TEXT, "at": "paris"}, {"text": TEXT, "at": "london", "target": "B-ORG"},
                      {"text": TEXT, "at": "london"}], "parameters": {"method": "grad-x-input"}})
    assert reply.status_code == 200, reply.text
    bad, label, good = reply.json()["explanations"]
    assert bad == {"error": "instance 0: --at 'paris' is not in the text: give a token index or a piece of the text",
                   "status": 400}
    assert label["status"] == 400 and label["error"].startswith("instance 1: unknown target label 'B-ORG'")
    assert _body(good) == document(explain(tagger, TEXT, ExplainConfig(method="grad-x-input", at="london")))
    alone = client.post("/v1/models/tagger:explain", json={"instances": [{"text": TEXT, "at": "paris"}]})
    assert alone.status_code == 400  # every instance failed: the request's status, one line
    assert alone.json()["error"] == "--at 'paris' is not in the text: give a token index or a piece of the text"


def test_predict_takes_no_per_instance_target(client: Any) -> None:
    reply = client.post("/v1/models/tagger:predict", json={"instances": [{"text": TEXT, "at": 4}]})
    assert reply.status_code == 400 and "at, contrast" in reply.json()["error"]


def test_a_question_instance_may_name_its_answer(client: Any, qa: TextModel) -> None:
    reply = client.post("/v1/models/qa:explain", json={
        "instances": [{"question": QUESTION, "context": CONTEXT, "answer": "gustave eiffel"},
                      {"question": QUESTION, "context": CONTEXT}],
        "parameters": {"method": "saliency"}})
    assert reply.status_code == 200, reply.text
    given, best = reply.json()["explanations"]
    cfg = ExplainConfig(method="saliency")
    assert _body(given) == document(explain_answer(qa, QUESTION, CONTEXT, ExplainConfig(method="saliency",
                                                                                          answer="gustave eiffel")))
    assert _body(best) == document(explain_answer(qa, QUESTION, CONTEXT, cfg))
    assert given["answer_span"]["answer"]["chosen"] == "given"


def test_the_openapi_instance_schema_has_the_spec_own_values(client: Any) -> None:
    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    text_instance, question_instance = schemas["Instances"]["properties"]["instances"]["items"]["oneOf"][1:]
    for name in ("target", "at", "contrast"):
        assert text_instance["properties"][name]["anyOf"] == [{"type": ["string", "integer"]}, {"type": "null"}]
    assert question_instance["properties"]["answer"]["anyOf"][0] == {"type": "string", "pattern": "\\S"}


# -- batch ---------------------------------------------------------------------------------------


RECORDS = [
    {"id": "a", "text": TEXT, "at": "london", "target": "B-LOC", "contrast": "O"},
    {"id": "b", "text": TEXT, "at": "4"},
    {"id": "c", "text": OTHER, "at": "paris"},  # a per-token model's "paris" in the other text
    {"id": "d", "text": TEXT, "at": "paris"},  # not in this text: this record's error
    {"id": "e", "text": TEXT, "target": "B-ORG", "at": "london"},  # no such label: this record's error
    {"id": "f", "text": OTHER},  # every entity: the matrix
    {"id": "g", "text": OTHER, "contrast": "O"},
]


def _settings(rec: dict[str, Any]) -> ExplainConfig:
    return ExplainConfig(method="grad-x-input", **{k: rec[k] for k in ("at", "target", "contrast") if k in rec})


def _check(records: list[dict[str, Any]], tagger: TextModel) -> None:
    assert [r["id"] for r in records] == [r["id"] for r in RECORDS]
    for rec, source in zip(records, RECORDS, strict=True):
        body = {k: v for k, v in rec.items() if k not in ("id", "row")}
        if source["id"] == "d":
            assert body == {"error": "--at 'paris' is not in the text: give a token index or a piece of the text",
                            "exit_code": 2}
        elif source["id"] == "e":
            assert body["exit_code"] == 2 and body["error"].startswith("unknown target label 'B-ORG'")
        elif "at" in source:
            assert body == document(explain(tagger, source["text"], _settings(source)))
        else:
            assert body == document(explain_tokens(tagger, source["text"], _settings(source)))


def test_batch_rows_name_their_own_targets(tagger: TextModel, tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    columns = Columns(id="id", target="target", at="at", contrast="contrast")
    summary = run_batch(tagger, source, tmp_path / "out.jsonl", GXI, columns)
    assert (summary.explained, summary.failed) == (5, 2)
    _check([json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()], tagger)


def test_batch_per_row_columns_from_the_command_line(tagger: TextModel, tmp_path: Path) -> None:
    from blackbox_sal.cli import main

    source = tmp_path / "in.csv"
    with open(source, "w", newline="") as fh:
        writer = csv.DictWriter(fh, ["key", "sentence", "where", "label", "versus"])
        writer.writeheader()
        for r in RECORDS:
            writer.writerow({"key": r["id"], "sentence": r["text"], "where": r.get("at", ""),
                             "label": r.get("target", ""), "versus": r.get("contrast", "")})
    out = tmp_path / "out.jsonl"
    code = main(["batch", str(source), "--model", str(ROOT / "models" / "tiny-tagger"), "-o", str(out), "-q",
                 "--method", "grad-x-input", "--text-column", "sentence", "--id-column", "key",
                 "--at-column", "where", "--target-column", "label", "--contrast-column", "versus"])
    assert code == 0
    _check([json.loads(line) for line in out.read_text().splitlines()], tagger)


def test_a_missing_per_row_column_is_named(tmp_path: Path) -> None:
    source = tmp_path / "in.csv"
    source.write_text("text\nada met alan\n")
    with pytest.raises(UsageError, match="has no column 'where'"):
        list(read_rows(source, Columns(at="where")))


def test_batch_answer_column(qa: TextModel, tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    rows = [{"q": QUESTION, "text": CONTEXT, "answer": "gustave eiffel"}, {"q": QUESTION, "text": CONTEXT},
            {"q": QUESTION, "text": CONTEXT, "answer": "the louvre"}]
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = ExplainConfig(method="saliency")
    summary = run_batch(qa, source, tmp_path / "out.jsonl", cfg, Columns(question="q", answer="answer"))
    assert (summary.explained, summary.failed) == (2, 1)
    given, best, missing = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert {k: v for k, v in given.items() if k not in ("id", "row")} == document(
        explain_answer(qa, QUESTION, CONTEXT, ExplainConfig(method="saliency", answer="gustave eiffel")))
    assert {k: v for k, v in best.items() if k not in ("id", "row")} == document(
        explain_answer(qa, QUESTION, CONTEXT, cfg))
    assert missing["exit_code"] == 2 and "the louvre" in missing["error"]


def test_ray_actors_get_every_field_of_a_row() -> None:
    """The Ray engine ships rows to its actors as columns of strings: a row's own settings (and
    its question) must arrive, or an actor would explain it with the job's."""
    from blackbox_sal.jobs.batch_ray import _item, _row_of

    rows = [Row(3, CONTEXT, "x", None, "B-LOC", None, ("a", "b"), QUESTION, "4", "O", "gustave eiffel"),
            Row(4, TEXT)]
    batch = {key: [_item(r)[key] for r in rows] for key in _item(rows[0])}
    assert [_row_of(batch, k) for k in range(len(rows))] == rows


def test_the_v2_explainer_takes_per_text_inputs(client: Any, tagger: TextModel) -> None:
    def texts(*data: str) -> dict[str, Any]:
        return {"name": "text", "datatype": "BYTES", "shape": [len(data)], "data": list(data)}

    def own(name: str, *data: str) -> dict[str, Any]:
        return {"name": name, "datatype": "BYTES", "shape": [len(data)], "data": list(data)}

    reply = client.post("/v2/models/tagger-explainer/infer", json={
        "inputs": [texts(TEXT, TEXT, OTHER), own("at", "london", "4", ""), own("contrast", "O", "", "")],
        "parameters": {"method": "grad-x-input"}})
    assert reply.status_code == 200, reply.text
    got = [json.loads(s) for s in reply.json()["outputs"][0]["data"]]
    assert _body(got[0]) == document(explain(tagger, TEXT, ExplainConfig(method="grad-x-input", at="london",
                                                                          contrast="O")))
    assert _body(got[1]) == document(explain(tagger, TEXT, ExplainConfig(method="grad-x-input", at=4)))
    assert _body(got[2]) == document(explain_tokens(tagger, OTHER, GXI))  # "": the request's (no at: every entity)
    for inputs, message in [
            ([texts(TEXT), own("at", "4", "5")], "the input at must hold one element per text (1): \"\" where the "
                                                 "text takes the request's parameter"),
            ([texts(TEXT), own("at", "4"), own("at", "5")], "the input at is given twice"),
            ([texts(TEXT), {**own("at", "4"), "datatype": "INT64", "data": [4]}],
             "the input's datatype must be BYTES (texts), got \"INT64\"")]:
        bad = client.post("/v2/models/tagger-explainer/infer", json={"inputs": inputs})
        assert bad.status_code == 400 and bad.json()["error"] == message
    model = client.post("/v2/models/tagger/infer", json={"inputs": [texts(TEXT), own("at", "4")]})
    assert model.status_code == 400  # the model's own route predicts: per-text targets are the explainer's


def test_at_on_a_model_that_is_not_per_token_is_refused_not_ignored() -> None:
    from blackbox_sal.model.files import default_model_path

    with pytest.raises(UsageError, match="--at names a position of a per-token model's output"):
        explain(load_model(default_model_path()), "a fine film", ExplainConfig(at=1))


# -- eval, sanity and global on a per-token model: every predicted entity a target --------------


def _forward(model: TextModel, tokens: Any, embeds: Any) -> Any:
    """The model's flat per-token output on embeddings [k, S, D] of ``tokens``: [k, S, L]."""
    import numpy as np

    ids, type_ids, mask = model.pad(tokens.ids, tokens.type_ids)
    return np.asarray(model.forward(embeds, ids, type_ids, mask)).reshape(len(embeds), len(ids), -1)


def test_the_items_of_a_per_token_model_are_its_targets(tagger: TextModel) -> None:
    from blackbox_sal.evaluation.common import per_token_items

    units, notes = per_token_items(tagger, [TEXT, OTHER, ""], GXI)
    assert [(u.text, u.target.name, u.target.positions) for u in units[:3]] == [
        (TEXT, "PER", (1, 2)), (TEXT, "PER", (4, 5)), (TEXT, "LOC", (7,))]
    assert len(units) == 3 + len(explain_tokens(tagger, OTHER, GXI).targets)
    assert notes[0].startswith("per-token model: the items are its targets, each predicted entity in each text "
                               f"({len(units)} in 2 texts)")
    assert notes[1].startswith("1 text(s) left out, their targets not found (the first: ")
    at, _ = per_token_items(tagger, [TEXT], ExplainConfig(at="alan turing"))
    assert [(u.target.positions, u.target.labels) for u in at] == [((4, 5), (1, 2))]  # B-PER, I-PER


def test_sanity_explains_each_target_for_its_own_positions_and_labels(tagger: TextModel) -> None:
    """At a randomized stage a target keeps its positions and labels (the randomized model
    predicts others): its f(x) is the randomized model's scores at those, summed."""
    import numpy as np

    from blackbox_sal.evaluation.common import per_token_items
    from blackbox_sal.evaluation.sanity import Cascade, _explain_all, sanity

    units, _ = per_token_items(tagger, [TEXT], GXI)
    original = _explain_all(tagger, units, [GXI], [None], 8)
    assert original[0] == [t.explanation for t in explain_tokens(tagger, TEXT, GXI).targets]
    randomized = Cascade(tagger, seed=0).at(1).model
    again = _explain_all(randomized, units, [GXI], original, 8)[0]
    logits = _forward(randomized, units[0].tokens, tagger.embed(tagger.pad(units[0].tokens.ids,
                                                                           units[0].tokens.type_ids)[0])[None])[0]
    for unit, e in zip(units, again, strict=True):
        assert isinstance(e, type(original[0][0]))
        want = sum(logits[i, label] for i, label in zip(unit.target.positions, unit.target.labels, strict=True))
        assert e.target_value == pytest.approx(want, rel=1e-5)  # type: ignore[union-attr]
        assert e.target.index == unit.target.labels[0]  # type: ignore[union-attr]
    assert not np.allclose(logits.argmax(-1), _forward(tagger, units[0].tokens, tagger.embed(tagger.pad(
        units[0].tokens.ids, units[0].tokens.type_ids)[0])[None])[0].argmax(-1))  # it does predict others
    result = sanity(tagger, [TEXT], ["grad-x-input"], stages=1, backends=False)
    assert (result.texts, result.unit) == (3, "targets")


def test_eval_of_a_per_token_target_removes_tokens_from_its_score(tagger: TextModel) -> None:
    import numpy as np

    from blackbox_sal.evaluation.common import per_token_items
    from blackbox_sal.evaluation.faithfulness import faithfulness, removals
    from blackbox_sal.vocabulary.runs import Forward, drive

    unit = per_token_items(tagger, [TEXT], GXI)[0][2]  # LOC 'london', token 7
    tokens = unit.tokens
    ids = tagger.pad(tokens.ids, tokens.type_ids)[0]
    x = tagger.embed(ids)
    pad = tagger.embed(np.array([tagger.tokenizer.token_to_id("[PAD]")]))[0]
    scores = np.arange(len(tokens), dtype=np.float64)  # ranks the last ordinary token ('.') first, then london

    def answer(request: Any) -> Any:  # the one Forward request of every removal, run as the engine would
        assert isinstance(request, Forward) and request.seq is not None
        return tagger.forward(request.points.take(0, request.points.n), request.seq.ids, request.seq.type_ids,
                              request.seq.mask)

    done = drive(removals(tagger, tokens, scores, unit.target, (0.1, 0.2), (0.0, 1.0), "probability"), answer)

    def f(embeds: Any) -> float:
        z = _forward(tagger, tokens, embeds[None])[0][7]
        return float(np.exp(z[3]) / np.exp(z).sum())  # the probability of B-LOC at london

    without = [x.copy(), x.copy()]
    without[0][8] = pad  # the top 1 of 8 ordinary tokens: '.'
    without[1][[7, 8]] = pad  # the top 2: '.', london
    assert done.value == pytest.approx(f(x), rel=1e-6)
    np.testing.assert_allclose(done.comprehensiveness, [f(x) - f(without[0]), f(x) - f(without[1])], rtol=1e-5)
    result = faithfulness(tagger, [TEXT, OTHER], ["grad-x-input", "random"], curve_points=3)
    assert result.unit == "targets" and result.texts == len(per_token_items(tagger, [TEXT, OTHER], GXI)[0])
    assert all(m.failed == 0 and m.texts == result.texts for m in result.methods)


def test_global_word_importance_over_every_entity(tagger: TextModel) -> None:
    import numpy as np

    from blackbox_sal.evaluation.global_views import word_importance_table
    from blackbox_sal.evaluation.word_importance import word_importance

    result = word_importance(tagger, [TEXT, OTHER], GXI, min_count=1)
    per_type: dict[str, dict[str, list[float]]] = {}
    for text in (TEXT, OTHER):
        for t in explain_tokens(tagger, text, ExplainConfig(method="grad-x-input", words=True)).targets:
            for w in t.explanation.words or ():
                if not w.special:
                    per_type.setdefault(t.label, {}).setdefault(w.text.lower(), []).append(w.score)
    assert [label for label, _ in result.by_class] == sorted(per_type)
    for label, stats in result.by_class:
        assert {s.word: s.count for s in stats} == {w: len(v) for w, v in per_type[label].items()}
        assert {s.word: s.mean for s in stats} == pytest.approx({w: float(np.mean(v)) for w, v in
                                                                 per_type[label].items()}, rel=1e-9)
    assert (result.unit, result.texts, result.n) == ("entities", 2, sum(
        len(explain_tokens(tagger, t, GXI).targets) for t in (TEXT, OTHER)))
    assert word_importance_table(result).startswith(
        f"word importance of tiny-tagger: grad-x-input scores of each predicted entity, mean per word over "
        f"{result.n} entities of 2 texts")
