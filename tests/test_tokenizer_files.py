"""Every tokenizer form a model ships with becomes the same tokenizer: each converted form
against a reference built independently (tokenizers' own trainers and implementations, the
sentencepiece library itself), on ids AND offsets; special tokens from the files' declarations;
refusals that name what was found."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers
from tokenizers.implementations import BertWordPieceTokenizer, ByteLevelBPETokenizer  # type: ignore[attr-defined]

from blackbox_sal.model.tokenizer_files import describe_missing, read_folder_tokenizer
from blackbox_sal.vocabulary.errors import ModelError

CORPUS = [
    "An absolute masterpiece, I loved every minute of it.",
    "The plot is thin, but the acting is wonderful.",
    "A dull, lifeless remake of a much better film.",
    "Nobody expected the ending; everyone talked about it for weeks.",
    "Café owners in Zürich serve naïve tourists crème brûlée.",
] * 20
SPECIALS: list[str | AddedToken] = ["<s>", "<pad>", "</s>", "<unk>"]
TEXTS = ["The acting is wonderful!", "A dull remake, lifeless and thin.", "Zürich café: crème brûlée?",
         "unseen wordsxyz QQQ", "  spaces   inside  "]


def encodings(tok: Tokenizer) -> list[tuple[list[int], list[tuple[int, int]]]]:
    return [(e.ids, e.offsets) for e in (tok.encode(t) for t in TEXTS)]


def test_vocab_txt_is_read_as_bert_wordpiece(tmp_path: Path) -> None:
    ref = BertWordPieceTokenizer(lowercase=True)
    ref.train_from_iterator(iter(CORPUS), vocab_size=200, min_frequency=1)
    ref.save_model(str(tmp_path))  # writes vocab.txt only
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": True}))
    read = read_folder_tokenizer(tmp_path, {})
    assert read is not None and read.form == "vocab.txt (WordPiece, lower-cased)"
    ref = BertWordPieceTokenizer(str(tmp_path / "vocab.txt"), lowercase=True)  # the reference reader
    assert encodings(read.tokenizer) == encodings(ref._tokenizer)
    first = read.tokenizer.encode("The acting")
    assert first.tokens[0] == "[CLS]" and first.tokens[-1] == "[SEP]"
    assert read.specials["cls"] == "[CLS]" and read.specials["pad"] == "[PAD]"
    assert read.tokenizer.padding is not None and read.tokenizer.padding["pad_token"] == "[PAD]"


def test_vocab_txt_casing_follows_the_vocabulary_when_undeclared(tmp_path: Path) -> None:
    ref = BertWordPieceTokenizer(lowercase=False)
    ref.train_from_iterator(iter(CORPUS), vocab_size=200, min_frequency=1)
    ref.save_model(str(tmp_path))
    read = read_folder_tokenizer(tmp_path, {})
    assert read is not None and read.form == "vocab.txt (WordPiece)"  # upper case in the vocabulary: kept
    ref = BertWordPieceTokenizer(str(tmp_path / "vocab.txt"), lowercase=False)
    assert encodings(read.tokenizer) == encodings(ref._tokenizer)


def test_vocab_txt_ids_are_line_numbers(tmp_path: Path) -> None:
    # a repeated line and an empty line both keep later tokens at their line's index (BERT's loader)
    (tmp_path / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\nthe\n\nthe\ncat\n")
    read = read_folder_tokenizer(tmp_path, {})
    assert read is not None
    assert read.tokenizer.encode("the cat").ids == [2, 6, 7, 3]


def test_vocab_json_and_merges_are_read_as_byte_level_bpe(tmp_path: Path) -> None:
    ref = ByteLevelBPETokenizer()
    ref.train_from_iterator(iter(CORPUS), vocab_size=400, min_frequency=1, special_tokens=SPECIALS)
    ref.save_model(str(tmp_path))  # vocab.json + merges.txt
    read = read_folder_tokenizer(tmp_path, {})
    assert read is not None and read.form == "vocab.json + merges.txt (byte-level BPE)"
    want = Tokenizer(models.BPE.from_file(str(tmp_path / "vocab.json"), str(tmp_path / "merges.txt")))
    want.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    from tokenizers import processors
    want.post_processor = processors.ByteLevel(trim_offsets=False)
    assert [e.ids for e in (read.tokenizer.encode(t) for t in TEXTS)] == [want.encode(t).ids for t in TEXTS]
    assert encodings(read.tokenizer) == encodings(ref._tokenizer)
    assert read.specials["pad"] == "<pad>"


def test_roberta_class_wraps_the_text(tmp_path: Path) -> None:
    ref = ByteLevelBPETokenizer()
    ref.train_from_iterator(iter(CORPUS), vocab_size=300, min_frequency=1, special_tokens=SPECIALS)
    ref.save_model(str(tmp_path))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "RobertaTokenizer"}))
    specials = {"bos_token": "<s>", "eos_token": {"content": "</s>"}}
    specials = {"bos_token": "<s>", "eos_token": {"content": "</s>"}}
    (tmp_path / "special_tokens_map.json").write_text(json.dumps(specials))
    read = read_folder_tokenizer(tmp_path, {})
    assert read is not None
    tokens = read.tokenizer.encode("The acting").tokens
    assert tokens[0] == "<s>" and tokens[-1] == "</s>"


def _train_spm(tmp_path: Path, model_type: str) -> Path:
    spm = pytest.importorskip("sentencepiece")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(CORPUS))
    prefix = tmp_path / f"sp-{model_type}"
    spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(prefix), vocab_size=60, hard_vocab_limit=False,
                                   model_type=model_type, character_coverage=1.0, minloglevel=2)
    folder = tmp_path / model_type
    folder.mkdir()
    (folder / "spiece.model").write_bytes(prefix.with_suffix(".model").read_bytes())
    return folder


@pytest.mark.parametrize("model_type", ["unigram", "bpe"])
def test_sentencepiece_model_is_decoded_without_the_library(tmp_path: Path, model_type: str) -> None:
    folder = _train_spm(tmp_path, model_type)
    import sentencepiece as spm

    ref = spm.SentencePieceProcessor(model_file=str(folder / "spiece.model"))
    read = read_folder_tokenizer(folder, {})
    kind = "Unigram" if model_type == "unigram" else "BPE"
    kind = "Unigram" if model_type == "unigram" else "BPE"
    assert read is not None and read.form == f"spiece.model (SentencePiece {kind})"
    texts = [*TEXTS[:3], "An absolute masterpiece, I loved every minute of it."]
    for text in texts:
        assert read.tokenizer.encode(text).ids == ref.encode(text), text
    assert read.specials["unk"] == "<unk>" and read.specials["eos"] == "</s>"


def test_t5_class_appends_eos(tmp_path: Path) -> None:
    folder = _train_spm(tmp_path, "unigram")
    (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "T5Tokenizer"}))
    read = read_folder_tokenizer(folder, {})
    assert read is not None and read.tokenizer.encode("The acting").tokens[-1] == "</s>"


def test_character_map_in_config_json(tmp_path: Path) -> None:
    chars = ["<pad>", "<unk>", *"abcdefghijklmnopqrstuvwxyz "]
    read = read_folder_tokenizer(tmp_path, {"char2id": chars})
    assert read is not None and read.form.startswith("config.json (character map, 29 entries")
    enc = read.tokenizer.encode("a cab!")
    assert enc.ids == [2, 28, 4, 2, 3, 1]  # one id per character; "!" unknown
    assert enc.offsets == [(k, k + 1) for k in range(6)]
    assert read.specials == {"unk": "<unk>", "pad": "<pad>"}


def test_character_map_file_and_documented_config_form(tmp_path: Path) -> None:
    (tmp_path / "alphabet.json").write_text(json.dumps({"_": 0, "?": 1, "A": 2, "b": 3}))
    spec = {"tokenizer": {"characters": "alphabet.json", "unk": "?", "pad": "_", "lowercase": True}}
    read = read_folder_tokenizer(tmp_path, spec)
    assert read is not None
    assert read.tokenizer.encode("Bz").ids == [3, 1]  # lower-cased, "z" unknown
    assert read.specials == {"unk": "?", "pad": "_"}
    # a plain vocab.json of single characters, with no merges.txt, is a character map too
    other = tmp_path / "other"
    other.mkdir()
    (other / "vocab.json").write_text(json.dumps({"<pad>": 0, "x": 1, "y": 2, "<unk>": 3}))
    read = read_folder_tokenizer(other, {})
    assert read is not None and read.tokenizer.encode("yxq").ids == [2, 1, 3]


def test_vocab_txt_of_single_characters_is_a_character_map(tmp_path: Path) -> None:
    (tmp_path / "vocab.txt").write_text("[PAD]\n[UNK]\nה\nש\nל\nו\nם\n \n")
    read = read_folder_tokenizer(tmp_path, {})
    assert read is not None and "character map" in read.form
    assert read.tokenizer.encode("שלום").ids == [3, 4, 5, 6]


def test_refusals_name_the_file(tmp_path: Path) -> None:
    assert read_folder_tokenizer(tmp_path, {}) is None
    assert "tokenizer.json, vocab.txt" in describe_missing(tmp_path) and '"tokenizer"' in describe_missing(tmp_path)
    (tmp_path / "spiece.model").write_bytes(b"\xff\xff\xff")
    with pytest.raises(ModelError, match="spiece.model is not a readable SentencePiece model"):
        read_folder_tokenizer(tmp_path, {})
    with pytest.raises(ModelError, match="gives two tokens the same id"):
        read_folder_tokenizer(tmp_path, {"tokenizer": {"characters": {"a": 1, "b": 1}}})
    with pytest.raises(ModelError, match="special tokens pad '<pad>' are not in the character map"):
        read_folder_tokenizer(tmp_path, {"tokenizer": {"characters": ["a", "b"], "pad": "<pad>"}})
    with pytest.raises(ModelError, match="not a file of the model folder"):
        read_folder_tokenizer(tmp_path, {"tokenizer": {"characters": "missing.json"}})


def test_a_character_model_is_explained_end_to_end(tmp_path: Path) -> None:
    """A character-level classifier with no tokenizer.json loads with its char map, and its
    scores add up (IG completeness) on the original model."""
    import onnx
    from onnx import TensorProto, helper

    from blackbox_sal import ExplainConfig, explain, load_model

    chars = ["<pad>", "<unk>", *"abcdefghijklmnopqrstuvwxyz "]
    rng = np.random.default_rng(0)
    table = rng.normal(size=(len(chars), 4)).astype(np.float32)
    weight = rng.normal(size=(4, 2)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "input_ids"], ["e"]),
         helper.make_node("ReduceMean", ["e", "axes"], ["pooled"], keepdims=0),
         helper.make_node("MatMul", ["pooled", "w"], ["logits"])],
        "charclf",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 2])],
        [onnx.numpy_helper.from_array(table, "table"), onnx.numpy_helper.from_array(weight, "w"),
         onnx.numpy_helper.from_array(np.array([1], np.int64), "axes")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)
    onnx.save(model, str(tmp_path / "model.onnx"))
    (tmp_path / "config.json").write_text(json.dumps({"char2id": chars, "id2label": {"0": "neg", "1": "pos"}}))
    loaded = load_model(tmp_path)
    result = explain(loaded, "a cab", ExplainConfig(method="ig", baseline="pad", backend="fd"))
    assert [t.text for t in result.tokens] == ["a", " ", "c", "a", "b"]
    assert result.convergence_delta is not None and result.baseline_value is not None
    total = sum(t.score for t in result.tokens)
    assert total == pytest.approx(result.target_value - result.baseline_value, abs=1e-3)
    assert result.target.label == ("pos" if result.prediction.index == 1 else "neg")


def test_character_maps_nested_in_side_files_as_packages_ship_them(tmp_path: Path) -> None:
    # torchtext's itos list, a package's {"input": {...}, "target": {...}}, a char_to_idx member
    forms = {"lemma_vocab.json": {"itos": ["<pad>", "<unk>", "a", "b"], "code_to_id": {"AB": 0}},
             "model.maps.json": {"input": {"_": 0, "a": 2, "b": 3, "<unk>": 1}, "target": {"x": 0}},
             "rawi.vocab.json": {"char_to_idx": {"<PAD>": 0, "<UNK>": 1, "a": 2, "b": 3}, "diac_to_idx": {}}}
    for name, data in forms.items():
        folder = tmp_path / name
        folder.mkdir()
        (folder / name).write_text(json.dumps(data))
        read = read_folder_tokenizer(folder, {})
        assert read is not None and read.form.startswith(name), name
        assert read.tokenizer.encode("abz").ids == [2, 3, 1], name
    both = tmp_path / "both"
    both.mkdir()
    for name, data in forms.items():
        (both / name).write_text(json.dumps(data))
    with pytest.raises(ModelError, match=r"several character maps .*lemma_vocab.json \('itos'\).*\"characters\""):
        read_folder_tokenizer(both, {})
    # a JSON file of other things is not taken for a vocabulary
    other = tmp_path / "other"
    other.mkdir()
    (other / "label_map.json").write_text(json.dumps({"positive": 0, "negative": 1}))
    assert read_folder_tokenizer(other, {}) is None
