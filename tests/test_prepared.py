"""Prepared folders (issue 12, item 5): ``blackbox-sal grad MODEL --folder OUT`` writes what an
install without onnx needs, and the prepared folder explains exactly as the original does.

The comparisons run both folders in this interpreter: the original through the onnx loading path
(split, its gradient graph in path form), the prepared one through the onnx-free path
(:mod:`blackbox_sal.model.wire`, the plain graph). Scores must agree within 1e-6.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import tiny

from blackbox_sal import ExplainConfig, default_model_path, explain, load_model
from blackbox_sal.cli import main
from blackbox_sal.gradient_graph.store import gradient_session, prepare
from blackbox_sal.model.prepared import CONFIG, GRAD, MODEL, TABLE, TOKENIZER
from blackbox_sal.vocabulary.errors import ModelError, UsageError
from blackbox_sal.vocabulary.result import Explanation

D = 8
METHODS = ("ig", "grad-x-input", "occlusion")
DEFAULT_TEXT = "An absolute masterpiece, I loved every minute of it."


def bert_like(root: Path) -> Path:
    rng = np.random.default_rng(12)
    m = tiny.bert_like(tiny.table(D, seed=12), rng.normal(size=(32, D)).astype(np.float32),
                       rng.normal(size=(2, D)).astype(np.float32), rng.normal(size=(D, 3)).astype(np.float32))
    return tiny.write_model_dir(root / "bert", m, labels=["neg", "mid", "pos"], with_cls=True,
                                config={"max_length": 32})


def causal_lm(root: Path) -> Path:
    return tiny.write_model_dir(root / "lm", tiny.causal_lm(tiny.table(D, seed=13)))


#: name -> (original folder builder, text)
MODELS: dict[str, tuple[Callable[[Path], Path], str]] = {
    "default": (lambda root: default_model_path(), DEFAULT_TEXT),
    "bert_like": (bert_like, tiny.TEXT),
    "causal_lm": (causal_lm, "the film was"),
}


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    """name -> (the original folder, its prepared folder), prepared once for the module."""
    root = tmp_path_factory.mktemp("prepared")
    out = {}
    for name, (build, _) in MODELS.items():
        original = build(root)
        out[name] = (original, prepare(load_model(original), root / f"{name}-prepared"))
    return out


def same(a: Explanation, b: Explanation, tol: float = 1e-6) -> None:
    """Two explanations of one text agree: every score within ``tol``, everything else equal."""
    assert [(t.text, t.start, t.end, t.special) for t in a.tokens] == [(t.text, t.start, t.end, t.special)
                                                                        for t in b.tokens]
    np.testing.assert_allclose([t.score for t in a.tokens], [t.score for t in b.tokens], rtol=0, atol=tol)
    assert (a.model, a.method, a.backend, a.reduce, a.task, a.target) == (b.model, b.method, b.backend, b.reduce,
                                                                          b.task, b.target)
    assert (a.prediction.index, a.prediction.label) == (b.prediction.index, b.prediction.label)
    np.testing.assert_allclose(a.prediction.scores, b.prediction.scores, rtol=0, atol=tol)
    assert a.target_value == pytest.approx(b.target_value, abs=tol)
    for x, y in ((a.baseline_value, b.baseline_value), (a.convergence_delta, b.convergence_delta)):
        assert (x is None) == (y is None)
        if x is not None and y is not None:
            assert x == pytest.approx(y, abs=tol)
    assert a.notes == b.notes
    assert a.settings == b.settings


def test_the_prepared_folder_holds_the_files_and_the_block(folders: dict[str, tuple[Path, Path]]) -> None:
    original, folder = folders["default"]
    assert sorted(p.name for p in folder.iterdir()) == sorted([MODEL, TABLE, GRAD, TOKENIZER, CONFIG])
    assert (folder / TOKENIZER).read_bytes() == (original / "tokenizer.json").read_bytes()
    config = json.loads((folder / CONFIG).read_text())
    assert config["name"] == "sentiment-cnn"
    assert config["id2label"] == {"0": "rotten", "1": "fresh"}
    assert config["max_length"] == 512
    assert config["gradient_model"] == GRAD
    block = config["prepared"]
    assert block["format"] == 1 and block["output"] == "logits" and block["task"] == "classification"
    assert block["origin"].startswith("split at ") and block["pad_id"] == 0
    table = np.load(folder / TABLE)
    assert table.dtype == np.float32 and table.ndim == 2
    np.testing.assert_array_equal(table, load_model(original).table)
    assert oct(folder.stat().st_mode & 0o777) != oct(0o700)  # meant to be shipped, not mkdtemp's private mode
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]  # no work folder left behind


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("method", METHODS)
def test_the_prepared_folder_explains_as_the_original(folders: dict[str, tuple[Path, Path]], name: str,
                                                      method: str) -> None:
    original, folder = folders[name]
    text = MODELS[name][1]
    config = ExplainConfig(method=method)
    a, b = load_model(original), load_model(folder)
    assert b.task == a.task and b.output == a.output and b.labels == a.labels and b.max_length == a.max_length
    assert b.body is None  # nothing parsed with onnx: the bytes went to onnxruntime
    ea, eb = explain(a, text, config), explain(b, text, config)
    same(ea, eb)
    if method != "occlusion":
        assert ea.backend == eb.backend == "graph"
        assert gradient_session(b).path_form is False  # the plain graph, as an edge install runs it


def test_the_command_line_writes_a_folder_that_explains_the_same(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cnn"
    assert main(["grad", "--folder", str(out), "-q"]) == 0
    assert "prepared sentiment-cnn (logits) in" in capsys.readouterr().out
    texts = []
    for model in (None, out):
        assert main(["explain", DEFAULT_TEXT, "--format", "json", "-q",
                     *(["--model", str(model)] if model else [])]) == 0
        texts.append(json.loads(capsys.readouterr().out))
    a, b = texts
    np.testing.assert_allclose([t["score"] for t in a["tokens"]], [t["score"] for t in b["tokens"]], atol=1e-6)
    for doc in (a, b):
        for t in doc["tokens"]:
            del t["score"]
    assert a["tokens"] == b["tokens"] and a["model"] == b["model"] == "sentiment-cnn"
    # an existing folder that is not empty is never written into
    assert main(["grad", "--folder", str(out), "-q"]) == 2
    assert "is not an empty folder" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["grad", "-o", str(tmp_path / "g.onnx"), "--folder", str(tmp_path / "x")])


def test_a_prepared_folder_is_not_prepared_again(folders: dict[str, tuple[Path, Path]], tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="prepare the original model folder"):
        prepare(load_model(folders["default"][1]), tmp_path / "again")


def test_load_options_that_need_the_surgery_again_are_refused(folders: dict[str, tuple[Path, Path]]) -> None:
    folder = folders["default"][1]
    with pytest.raises(UsageError, match="prepared to explain output 'logits'"):
        load_model(folder, output="other")
    with pytest.raises(UsageError, match="no integer operators"):
        load_model(folder, dequantize=True)
    assert load_model(folder, output="logits").output == "logits"


def _copy(folder: Path, root: Path) -> Path:
    copy = root / "copy"
    shutil.copytree(folder, copy)
    return copy


def _edit(folder: Path, **prepared: object) -> None:
    config = json.loads((folder / CONFIG).read_text())
    config["prepared"].update(prepared)
    (folder / CONFIG).write_text(json.dumps(config))


@pytest.mark.parametrize(("change", "message"), [
    ({"format": 2}, "prepared in format 2"),
    ({"format": "1"}, "prepared.format must be an integer"),
    ({"output": 5}, "prepared.output must be a non-empty string"),
    ({"output": "nope"}, "names the prepared output 'nope'"),
    ({"task": "dance"}, "prepared.task must be one of"),
    ({"quantized": "MatMulInteger"}, "prepared.quantized must be a list of strings"),
    ({"fixed_length": 64}, "they do not belong together"),
    ({"fixed_batch": -1}, "prepared.fixed_batch must be an integer >= 1"),
    ({"pad_id": 3}, "pad token is 0"),
])
def test_a_prepared_block_that_does_not_fit_is_refused(folders: dict[str, tuple[Path, Path]], tmp_path: Path,
                                                       change: dict[str, object], message: str) -> None:
    folder = _copy(folders["default"][1], tmp_path)
    _edit(folder, **change)
    with pytest.raises(ModelError, match=message):
        load_model(folder)


def test_a_prepared_folder_missing_its_table_or_of_another_width_is_refused(
        folders: dict[str, tuple[Path, Path]], tmp_path: Path) -> None:
    folder = _copy(folders["default"][1], tmp_path)
    table = np.load(folder / TABLE)
    np.save(folder / TABLE, table[:, :-1])
    with pytest.raises(ModelError, match="do not belong together"):
        load_model(folder)
    (folder / TABLE).unlink()
    with pytest.raises(ModelError, match="has no embeddings.npy"):
        load_model(folder)


def test_a_prepared_folder_with_a_wrong_graph_falls_back_to_finite_differences(
        folders: dict[str, tuple[Path, Path]], tmp_path: Path) -> None:
    """The shipped graph is verified against finite differences, as every graph is: another
    model's graph is refused and auto says why."""
    folder = _copy(folders["bert_like"][1], tmp_path)
    shutil.copy(folders["default"][1] / GRAD, folder / GRAD)
    e = explain(load_model(folder), tiny.TEXT, ExplainConfig(method="grad-x-input"))
    assert e.backend == "fd"


ONNX_FREE = r"""
import json, sys
sys.modules["onnx"] = None  # any import of onnx raises ImportError
from blackbox_sal import ExplainConfig, explain, load_model
from blackbox_sal.vocabulary.errors import ModelError
model = load_model(sys.argv[1])
scores = [t.score for t in explain(model, sys.argv[2], ExplainConfig(method="ig")).tokens]
try:
    load_model(sys.argv[3])
    refused = ""
except ModelError as exc:
    refused = str(exc)
loaded = sorted(m for m in sys.modules if (m == "onnx" or m.startswith("onnx.")) and sys.modules[m] is not None)
print(json.dumps({"scores": scores, "refused": refused, "onnx": loaded}))
"""


def test_without_onnx_a_prepared_folder_explains_and_an_original_is_refused(
        folders: dict[str, tuple[Path, Path]]) -> None:
    original, folder = folders["bert_like"]
    r = subprocess.run([sys.executable, "-c", ONNX_FREE, str(folder), tiny.TEXT, str(original)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    assert got["onnx"] == []
    assert got["refused"].startswith("this install has no onnx package: it loads prepared folders only "
                                     "(blackbox-sal grad MODEL --folder OUT where onnx is installed)")
    want = [t.score for t in explain(load_model(original), tiny.TEXT, ExplainConfig(method="ig")).tokens]
    np.testing.assert_allclose(got["scores"], want, atol=1e-6)


def test_without_onnx_the_command_line_refuses_an_original_folder_with_exit_3(tmp_path: Path) -> None:
    code = ("import runpy, sys; sys.modules['onnx'] = None; "
            "sys.argv = ['blackbox-sal', 'explain', 'good', '--model', sys.argv[1]]; "
            "runpy.run_module('blackbox_sal', run_name='__main__', alter_sys=True)")
    r = subprocess.run([sys.executable, "-c", code, str(default_model_path())], capture_output=True, text=True,
                       timeout=60, env={**os.environ, "NO_COLOR": "1"})
    assert r.returncode == 3, r.stderr
    assert r.stderr.startswith("blackbox-sal: error: this install has no onnx package: it loads prepared folders "
                               "only (blackbox-sal grad MODEL --folder OUT where onnx is installed)")
    assert "Traceback" not in r.stderr


def test_a_shipped_gradient_graph_is_carried_over(tmp_path: Path) -> None:
    """A folder that ships its own graph (export_torch writes one) is explained with that graph,
    so its prepared folder carries the same graph rather than one built anew."""
    import onnx

    from blackbox_sal.gradient_graph.store import build_gradient

    w1, b1, w2 = tiny.mlp_weights(D, 5, 2, seed=4)
    d = tiny.write_model_dir(tmp_path / "ship", tiny.tanh_mlp(tiny.table(D), w1, b1, w2),
                             config={"gradient_model": "shipped.onnx"})
    shipped = build_gradient(load_model(d))
    shipped.producer_name = "shipped by hand"
    onnx.save(shipped, str(d / "shipped.onnx"))
    out = prepare(load_model(d), tmp_path / "prepared")
    assert onnx.load(str(out / GRAD)) == shipped
    a, b = (explain(load_model(f), tiny.TEXT, ExplainConfig(method="ig")) for f in (d, out))
    same(a, b)


def test_strings_of_the_prepared_block_reach_the_terminal_escaped(folders: dict[str, tuple[Path, Path]],
                                                                   tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    folder = _copy(folders["default"][1], tmp_path)
    _edit(folder, twin_of=["\x1b]0;owned\x07MatMulInteger"])
    assert main(["explain", "good", "--model", str(folder), "--method", "occlusion"]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\\x1b]0;owned\\x07MatMulInteger" in out
