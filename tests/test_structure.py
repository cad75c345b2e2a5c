"""The package's shape: every module imports alone, lower layers never import higher ones,
the public API is pinned, and importing or configuring loads no heavy dependency."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import blackbox_sal

PACKAGE = Path(blackbox_sal.__file__).resolve().parent

#: lowest first; a module may import from its own entry or any before it (typing-only imports
#: under ``if TYPE_CHECKING:`` do not count: they never run)
LAYERS = [
    {"errors", "progress", "reductions", "differences", "runs", "scores", "text", "datasets", "diagnostics"},
    {"result", "surgery", "baselines", "render"},
    {"model"},
    {"gradient_graph"},
    {"gradients"},
    {"methods"},
    {"config"},
    {"engine"},
    {"explaining"},
    {"tasks", "arrays", "torch_export"},
    {"batch", "batch_ray"},
    {"evaluation"},
    {"server"},
    {"cli", "__main__", "__init__"},
]


def layer_of(module: str) -> int:
    top = module.split(".")[1] if module.count(".") else "__init__"
    top = top.removesuffix(".py")
    return next(k for k, names in enumerate(LAYERS) if top in names)


def modules() -> list[str]:
    names = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if parts[-1] != "__main__":  # the entry point runs the command line when imported
            names.append(".".join(parts))
    return names


def runtime_imports(path: Path) -> set[str]:
    """blackbox_sal modules a file imports outside ``if TYPE_CHECKING:`` blocks."""
    tree = ast.parse(path.read_text())
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for child in node.body for n in ast.walk(child))
    found = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("blackbox_sal"):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("blackbox_sal"))
    return found


def test_every_module_has_a_layer() -> None:
    for name in modules():
        layer_of(name if name != "blackbox_sal" else "blackbox_sal.__init__")


def test_lower_layers_never_import_higher_ones() -> None:
    bad = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        own = layer_of(rel)
        for target in runtime_imports(path):
            if target == "blackbox_sal":  # only for __version__, which the lazy root defines itself
                if "from blackbox_sal import __version__" not in path.read_text():
                    bad.append(f"{rel} imports the package root")
            elif layer_of(target) > own:
                bad.append(f"{rel} (layer {own}) imports {target} (layer {layer_of(target)})")
    assert not bad, "\n".join(bad)


def test_every_submodule_imports_alone_in_a_fresh_interpreter() -> None:
    """Each module is imported with no blackbox_sal module loaded before it: a hidden cycle
    ('partially initialized module') shows here whatever the import order elsewhere."""
    script = (
        "import importlib, json, sys\n"
        "failed = {}\n"
        f"for name in {modules()!r}:\n"
        "    for loaded in [m for m in sys.modules if m == 'blackbox_sal' or m.startswith('blackbox_sal.')]:\n"
        "        del sys.modules[loaded]\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except Exception as exc:\n"
        "        failed[name] = repr(exc)\n"
        "print(json.dumps(failed))\n")
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {}


def test_importing_the_package_and_validating_a_config_load_no_heavy_dependency() -> None:
    script = ("import sys, blackbox_sal\n"
              "heavy = lambda: sorted(m for m in ('onnx', 'onnxruntime') if m in sys.modules)\n"
              "first = heavy()\n"
              "from blackbox_sal.config import ExplainConfig\n"
              "ExplainConfig(method='ig', steps=16).validated()\n"
              "print(first, heavy())\n")
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[] []"


def test_public_api_is_pinned() -> None:
    assert blackbox_sal.__all__ == [
        "Attributions", "Choices", "ExplainConfig", "Explanation", "Generation", "InputError", "Label", "ModelError",
        "Prediction", "Provenance", "SalError", "Similarity", "Span", "TextModel", "UnavailableError", "UsageError",
        "Window", "__version__", "attribute", "default_model_path", "explain", "explain_choices",
        "explain_generation", "explain_many", "explain_similarity", "export_gradient", "export_torch", "load_model",
        "prepare", "render_html", "render_json", "render_terminal",
    ]
    for name in blackbox_sal.__all__:
        assert getattr(blackbox_sal, name) is not None


def test_public_names_stay_what_they_are_once_every_submodule_is_imported() -> None:
    """A submodule named like a public function would replace it on the lazy package root."""
    import importlib
    import types

    for name in modules():
        importlib.import_module(name)
    shadowed = [n for n in blackbox_sal.__all__ if isinstance(getattr(blackbox_sal, n), types.ModuleType)]
    assert shadowed == []


def test_renamed_renderers_still_work_for_a_release_with_a_warning() -> None:
    import pytest

    with pytest.warns(DeprecationWarning, match="use render_json"):
        old = blackbox_sal.render_similarity_json
    assert old is blackbox_sal.render_json


#: a site hook for a fresh interpreter: onnx cannot be imported (sys.modules["onnx"] = None makes
#: every import of it raise ImportError), and at exit the onnx modules loaded are written to a file
_NO_ONNX_SITE = '''
import atexit, json, os, sys
if os.environ.get("SAL_TEST_BLOCK_ONNX") == "1":
    sys.modules["onnx"] = None
def _report():
    loaded = sorted(m for m in sys.modules if (m == "onnx" or m.startswith("onnx.")) and sys.modules[m] is not None)
    with open(os.environ["SAL_TEST_ONNX_REPORT"], "w") as fh:
        json.dump(loaded, fh)
atexit.register(_report)
'''

_EXPLAIN_API = '''
import json, sys
from blackbox_sal import ExplainConfig, explain, load_model
result = explain(load_model(sys.argv[1]), sys.argv[2], ExplainConfig(method="grad-x-input"))
print(json.dumps([result.backend, [t.score for t in result.tokens]]))
'''


def test_a_prepared_folder_is_loaded_and_explained_without_onnx(tmp_path: Path) -> None:
    """An edge install has no onnx: in fresh interpreters where importing onnx fails, and in ones
    where it would work, a prepared folder loads and explains through the API and through
    ``python -m blackbox_sal explain``, and no onnx module is ever loaded."""
    import os

    from blackbox_sal import ExplainConfig, default_model_path, explain, load_model
    from blackbox_sal.gradient_graph.store import prepare

    folder = prepare(load_model(default_model_path()), tmp_path / "prepared")
    text = "A dull, lifeless remake."
    want = explain(load_model(default_model_path()), text, ExplainConfig(method="grad-x-input"))
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(_NO_ONNX_SITE)
    for block in ("1", "0"):
        report = tmp_path / f"onnx-{block}.json"
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]),
               "SAL_TEST_BLOCK_ONNX": block, "SAL_TEST_ONNX_REPORT": str(report), "NO_COLOR": "1"}
        api = subprocess.run([sys.executable, "-c", _EXPLAIN_API, str(folder), text], capture_output=True,
                             text=True, timeout=120, env=env)
        assert api.returncode == 0, api.stderr
        assert json.loads(report.read_text()) == []
        backend, scores = json.loads(api.stdout)
        assert backend == "graph"
        assert scores == [t.score for t in want.tokens]
        cli = subprocess.run([sys.executable, "-m", "blackbox_sal", "explain", text, "--model", str(folder),
                              "--method", "grad-x-input", "--format", "json"], capture_output=True, text=True,
                             timeout=120, env=env)
        assert cli.returncode == 0, cli.stderr
        assert json.loads(report.read_text()) == []
        assert [t["score"] for t in json.loads(cli.stdout)["tokens"]] == scores


#: the modules an explanation of a prepared folder goes through: none may import onnx when imported
EXPLAIN_PATH = ["blackbox_sal.explaining", "blackbox_sal.tasks", "blackbox_sal.gradient_graph.store",
                "blackbox_sal.model.loading", "blackbox_sal.model.prepared", "blackbox_sal.model.files",
                "blackbox_sal.model.wire", "blackbox_sal.model.text_model", "blackbox_sal.model.session",
                "blackbox_sal.cli"]


def test_the_explain_path_imports_without_onnx() -> None:
    script = ("import importlib, sys\n"
              "sys.modules['onnx'] = None\n"
              f"for name in {EXPLAIN_PATH!r}:\n"
              "    importlib.import_module(name)\n"
              "print(sorted(m for m in sys.modules if m.startswith('onnx') and m != 'onnxruntime'\n"
              "             and not m.startswith('onnxruntime.') and sys.modules[m] is not None))\n")
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"
