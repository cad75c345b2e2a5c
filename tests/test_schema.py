"""The JSON output against its JSON Schema (blackbox_sal/render/explanation.schema.json)."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import numpy as np
import pytest
import tiny

import blackbox_sal as bs
from blackbox_sal import ExplainConfig, load_model, render_json

SCHEMA = json.loads((Path(bs.__file__).parent / "render" / "explanation.schema.json").read_text())
D = 6
TABLE = tiny.table(D, seed=9)
W1, B1, W2 = tiny.mlp_weights(D, 5, 3, seed=9)


def valid(doc: str) -> dict[str, object]:
    data = json.loads(doc)
    jsonschema.validate(data, SCHEMA, cls=jsonschema.Draft202012Validator)
    return data


@pytest.fixture(scope="module")
def classifier(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny.write_model_dir(tmp_path_factory.mktemp("cls"), tiny.tanh_mlp(TABLE, W1, B1, W2), ["a", "b", "c"],
                                with_cls=True, config={"max_length": 12})


@pytest.mark.parametrize("cfg", [
    ExplainConfig(method="ig", steps=8, words=True), ExplainConfig(method="ig", steps="auto"),
    ExplainConfig(method="saliency", backend="fd"), ExplainConfig(method="smoothgrad", samples=2),
    ExplainConfig(method="occlusion"), ExplainConfig(method="grad-x-input", long="window", window_overlap=2),
    ExplainConfig(method="shapley"), ExplainConfig(method="kernel-shap", words=True, players="tokens"),
    ExplainConfig(method="permutation", samples=1), ExplainConfig(method="lime"), ExplainConfig(method="owen"),
])
def test_explanations_match_the_schema(classifier: Path, cfg: ExplainConfig) -> None:
    model = load_model(classifier)
    text = " ".join([tiny.TEXT] * 3) if cfg.long == "window" else tiny.TEXT
    data = valid(render_json(bs.explain(model, text, cfg)))
    assert data["method"] == cfg.method


def test_tasks_match_the_schema(classifier: Path, tmp_path: Path) -> None:
    model = load_model(classifier)
    valid(render_json(bs.explain_choices(model, "the film", ["good", "bad"], ExplainConfig(target="a"))))
    valid(render_json(bs.explain_similarity(model, "the film", "good plot", ExplainConfig(steps=4))))
    lm = load_model(tiny.write_model_dir(tmp_path / "lm", tiny.causal_lm(TABLE)))
    valid(render_json(bs.explain_generation(lm, "the film was", 2, ExplainConfig(method="grad-x-input"))))


def test_the_schema_is_strict(classifier: Path) -> None:
    """A misspelt settings key, a missing field or a wrong type does not pass."""
    data = json.loads(render_json(bs.explain(load_model(classifier), tiny.TEXT, ExplainConfig(steps=4))))
    for broken in ({**data, "settings": {**data["settings"], "stepz": 4}}, {k: v for k, v in data.items()
                                                                             if k != "tokens"},
                   {**data, "target_value": "high"}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(broken, SCHEMA, cls=jsonschema.Draft202012Validator)
    assert np.isfinite(data["target_value"])
