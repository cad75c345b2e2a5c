"""Read a model folder's tokenizer, whatever form it ships in, as one ``tokenizers.Tokenizer``.

Models from elsewhere rarely ship a ``tokenizer.json``. Every form below becomes the same
``tokenizers.Tokenizer`` (with its normalizer, pre-tokenizer, post-processor and decoder), so
offsets, words, padding and special tokens work unchanged downstream. The first form found
wins, in this order:

==========================  ==============================================================
tokenizer.json              read as it is (Hugging Face ``tokenizers``)
config.json ``tokenizer``   the documented form for character-level models, below
vocab.txt                   WordPiece (BERT); lower-casing from tokenizer_config.json's
                            ``do_lower_case``, else from the vocabulary itself (no upper-case
                            letter in it: lower-cased); [CLS] $A [SEP] when both are declared
vocab.json + merges.txt     BPE; byte-level (GPT-2, RoBERTa) when the vocabulary holds ``Ġ``
                            pieces; ``<s> $A </s>`` for RoBERTa/BART-like classes
\\*.model (SentencePiece)    the model protobuf decoded here (no ``sentencepiece`` package):
                            Unigram or BPE pieces with their scores, the precompiled
                            normalization map, the ▁ whitespace convention, byte fallback
a character map             ``{char: id}`` or a list of characters, in config.json
                            (``char2id``, ``char_to_id``, ``vocab``) or in a JSON file
                            (char2id.json, chars.json, vocab.json of single characters, or
                            any *.json whose name says vocab/char/map/token), itself or
                            under a member (``stoi``, ``itos``, ``char_to_idx``, ``input``,
                            ``tokens``, ...); several such files: refused, config says which
==========================  ==============================================================

A vocabulary whose every entry (bracketed specials such as ``<pad>`` or ``[UNK]`` aside) is
one character is read as a character map whatever its file, since WordPiece or BPE over
single characters would split text differently from the model's own code.

The documented config.json form for character-level models::

    "tokenizer": {"characters": "char2id.json" | {"a": 3, ...} | ["<pad>", "<unk>", "a", ...],
                  "unk": "<unk>", "pad": "<pad>", "bos": null, "eos": null, "lowercase": false}

Special tokens (pad, unk, cls, sep, bos, eos, mask) come from the files' own declarations
(special_tokens_map.json, tokenizer_config.json, the SentencePiece trainer spec, the config
form above) before any guessing; they are added to the tokenizer as special tokens, and the
pad token is declared as its padding token (``Tokenizer.padding``), where the rest of the
package looks for it. Every file is read through :func:`blackbox_sal.model.files.read_side_file`
(capped, links only within the folder). Every failure is a ModelError naming the file.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

from blackbox_sal.model import files
from blackbox_sal.text.normalization import check_normalizer
from blackbox_sal.vocabulary.errors import ModelError

#: the roles of special tokens, and the names files give them
ROLES = ("pad", "unk", "cls", "sep", "bos", "eos", "mask")
#: SentencePiece model files, by the names exporters give them
SENTENCEPIECE_FILES = ("tokenizer.model", "spiece.model", "sentencepiece.bpe.model", "sentencepiece.model",
                       "spm.model", "source.spm")
#: JSON character maps, by the names packages give them
CHARACTER_FILES = ("char2id.json", "char_to_id.json", "chars.json", "characters.json", "char_vocab.json",
                   "vocab.json")
#: config.json keys that hold a character map
CHARACTER_KEYS = ("char2id", "char_to_id", "vocab")
#: members of a JSON side file that hold its character map (torchtext's stoi/itos, packages' own)
MAP_KEYS = ("char2id", "char_to_id", "char_to_idx", "stoi", "itos", "chars", "characters", "vocab", "tokens",
            "input")
#: words in a JSON file's name that say it may hold a vocabulary
MAP_WORDS = ("vocab", "char", "map", "alphabet", "stoi", "itos", "token")
#: JSON side files that are never a character map
NOT_MAPS = frozenset({"config.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.json",
                      "added_tokens.json", "generation_config.json", "modules.json"})
#: the most folder entries looked at for a character map
MAX_LISTED = 64
#: the most entries a vocabulary may hold (a bound on memory for untrusted files)
MAX_VOCAB = 4_000_000


@dataclass(frozen=True)
class FolderTokenizer:
    """A tokenizer read from a folder: the tokenizer, which form it came from (for notes), and
    the special tokens its files declare (role -> token)."""

    tokenizer: Tokenizer
    form: str
    specials: dict[str, str]


def read_folder_tokenizer(folder: Path, config: dict[str, Any]) -> FolderTokenizer | None:
    """The folder's tokenizer in the first form found (see the module's table); None when the
    folder has none of them."""
    declared = _declared_specials(folder)
    if (raw := files.read_side_file(folder, "tokenizer.json")) is not None:
        return FolderTokenizer(_tokenizer_json(raw, folder / "tokenizer.json"), "tokenizer.json", declared)
    spec = config.get("tokenizer")
    if spec is not None:
        return _character_form(spec, folder, declared)
    if (raw := files.read_side_file(folder, "vocab.txt")) is not None:
        vocab = _vocab_lines(raw, "vocab.txt")
        if _single_characters(vocab):
            return _characters(vocab, folder / "vocab.txt", declared, {})
        return _wordpiece(vocab, folder, declared)
    vocab_json = files.read_side_file(folder, "vocab.json")
    merges = files.read_side_file(folder, "merges.txt")
    if vocab_json is not None and merges is not None:
        return _bpe(_json_map(vocab_json, "vocab.json"), merges, folder, declared)
    for name in SENTENCEPIECE_FILES:
        if (raw := files.read_side_file(folder, name)) is not None:
            return _sentencepiece(raw, name, folder, declared)
    for key in CHARACTER_KEYS:
        if key in config:
            return _characters(_map_or_list(config[key], f"config.json {key!r}"), folder / "config.json",
                               declared, {})
    found = _character_files(folder)
    if len(found) > 1:
        names = ", ".join(f"{name} ({where})" for name, where, _ in found)
        raise ModelError(f"several character maps in {str(folder)!r}: {names}; say which in config.json: "
                         "\"tokenizer\": {\"characters\": \"FILE\"}")
    if found:
        name, where, mapping = found[0]
        return _characters(mapping, folder / name, declared, {}, where=where)
    return None


def _character_files(folder: Path) -> list[tuple[str, str, dict[str, int]]]:
    """JSON side files that hold a character map (see :func:`_nested_map`): the known names,
    else any JSON file whose name says vocabulary or characters. (name, where in it, map)."""
    names = list(CHARACTER_FILES)
    try:
        listed = sorted(p.name for p in folder.iterdir())[:MAX_LISTED]
    except OSError:
        listed = []
    names += [n for n in listed if n.endswith(".json") and n not in names and n not in NOT_MAPS
              and any(word in n.lower() for word in MAP_WORDS)]
    found = []
    for name in names[:MAX_LISTED]:
        raw = files.read_side_file(folder, name)
        if raw is None:
            continue
        try:
            data = json.loads(_utf8(raw, name))
        except (ValueError, RecursionError, ModelError):
            continue
        nested = _nested_map(data)
        if nested is not None:
            found.append((name, *nested))
    return found


def _nested_map(data: Any) -> tuple[str, dict[str, int]] | None:
    """A character map held by a JSON document: the document itself ({char: id} or a list),
    else its first member under one of :data:`MAP_KEYS` that is one. (where, map)."""
    candidates = [("the file", data)]
    if isinstance(data, dict):
        candidates += [(repr(k), data[k]) for k in MAP_KEYS if k in data]
    for where, value in candidates:
        try:
            mapping = _map_or_list(value, where)
        except ModelError:
            continue
        if _single_characters(mapping):
            return where, mapping
    return None


def load_tokenizer(found: files.ModelFiles) -> Tokenizer:
    """The model folder's tokenizer in whichever form it ships; ModelError naming what was
    looked for when it has none."""
    folder = found.onnx_path.parent
    read = read_folder_tokenizer(folder, found.config)
    if read is None:
        raise ModelError(describe_missing(folder))
    return read.tokenizer


def describe_missing(folder: Path) -> str:
    """The one line a folder with no tokenizer gets: what was looked for, and the way out."""
    return (f"no tokenizer in {str(folder)!r}: looked for tokenizer.json, vocab.txt, vocab.json + merges.txt, "
            f"a SentencePiece model ({', '.join(SENTENCEPIECE_FILES)}), a character map "
            f"({', '.join(CHARACTER_FILES)}, or config.json {'/'.join(CHARACTER_KEYS)}); for a character-level "
            "model add to config.json \"tokenizer\": {\"characters\": {\"a\": 1, ...}, \"unk\": ..., \"pad\": ...}")


# --- tokenizer.json -------------------------------------------------------------------------

def _tokenizer_json(raw: bytes, path: Path) -> Tokenizer:
    try:
        tokenizer = Tokenizer.from_str(raw.decode("utf-8"))
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # pyo3's PanicException derives from BaseException
        raise _bad(path, exc) from exc
    check_normalizer(tokenizer, repr(str(path)))  # a normalizer expanding each character by thousands
    return tokenizer


# --- WordPiece (vocab.txt) ----------------------------------------------------------------

def _wordpiece(vocab: dict[str, int], folder: Path, declared: dict[str, str]) -> FolderTokenizer:
    config = _tokenizer_config(folder)
    specials = _specials(declared, vocab, {"unk": "[UNK]", "pad": "[PAD]", "cls": "[CLS]", "sep": "[SEP]",
                                           "mask": "[MASK]"})
    lower = config.get("do_lower_case")
    if not isinstance(lower, bool):  # undeclared: a vocabulary without upper case was lower-cased
        lower = not any(ch.isupper() for token in vocab for ch in token)
    strip = config.get("strip_accents")
    chinese = config.get("tokenize_chinese_chars", True)
    tok = Tokenizer(models.WordPiece(vocab, unk_token=specials.get("unk", "[UNK]"), max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=chinese is not False,
        strip_accents=strip if isinstance(strip, bool) else None, lowercase=lower)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
    cls, sep = specials.get("cls"), specials.get("sep")
    if cls is not None and sep is not None:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{cls} $A {sep}", pair=f"{cls} $A {sep} $B:1 {sep}:1",
            special_tokens=[(cls, vocab[cls]), (sep, vocab[sep])])
    return _finish(tok, "vocab.txt (WordPiece" + (", lower-cased)" if lower else ")"), specials)


# --- BPE (vocab.json + merges.txt) ----------------------------------------------------------

#: tokenizer classes that wrap a text as <s> ... </s>
_ROBERTA_LIKE = ("Roberta", "Bart", "Longformer", "Camembert", "XLMRoberta", "Blenderbot", "LED", "MBart")


def _bpe(vocab: dict[str, int], raw_merges: bytes, folder: Path, declared: dict[str, str]) -> FolderTokenizer:
    config = _tokenizer_config(folder)
    merges = _merges(raw_merges)
    byte_level = any(token.startswith("Ġ") for token in vocab)
    specials = _specials(declared, vocab, {"unk": "<unk>", "pad": "<pad>", "bos": "<s>", "eos": "</s>",
                                           "mask": "<mask>"} if byte_level else {"unk": "<unk>", "pad": "<pad>"})
    suffix = "</w>" if any(token.endswith("</w>") for token in vocab) else None
    unk = specials.get("unk") if not byte_level else None
    try:
        options = {k: v for k, v in (("unk_token", unk), ("end_of_word_suffix", suffix)) if v is not None}
        model = models.BPE(vocab, merges, **options)
    except Exception as exc:  # a merge naming a piece the vocabulary lacks
        raise _bad(folder / "merges.txt", exc) from exc
    tok = Tokenizer(model)
    klass = str(config.get("tokenizer_class") or "")
    if byte_level:
        prefix = config.get("add_prefix_space") is True
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=prefix, use_regex=True)
        tok.decoder = decoders.ByteLevel()
        bos, eos = specials.get("bos"), specials.get("eos")
        if klass.startswith(_ROBERTA_LIKE) and bos is not None and eos is not None:
            tok.post_processor = processors.RobertaProcessing((eos, vocab[eos]), (bos, vocab[bos]),
                                                              trim_offsets=True, add_prefix_space=prefix)
        else:  # as transformers' GPT-2 converter: offsets keep the leading space
            tok.post_processor = processors.ByteLevel(trim_offsets=False)
    else:
        tok.normalizer = normalizers.Lowercase() if config.get("do_lower_case") is True else None
        tok.pre_tokenizer = pre_tokenizers.Whitespace()
        tok.decoder = decoders.BPEDecoder(suffix=suffix or "</w>")
    form = "vocab.json + merges.txt (" + ("byte-level BPE" if byte_level else "BPE") + ")"
    return _finish(tok, form, specials)


def _merges(raw: bytes) -> list[tuple[str, str]]:
    text = _utf8(raw, "merges.txt")
    merges = []
    for k, line in enumerate(text.splitlines()):
        if (k == 0 and line.startswith("#version")) or not line.strip():
            continue
        parts = line.split(" ")
        if len(parts) != 2:
            raise ModelError(f"merges.txt line {k + 1} is not two pieces separated by one space")
        merges.append((parts[0], parts[1]))
    if len(merges) > MAX_VOCAB:
        raise ModelError(f"merges.txt holds over {MAX_VOCAB:,} merges")
    return merges


# --- SentencePiece --------------------------------------------------------------------------

#: SentencePiece piece types (sentencepiece_model.proto)
_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED, _UNUSED, _BYTE = 1, 2, 3, 4, 5, 6
#: tokenizer classes and what they add around a text: (prefix roles, suffix roles)
_SPM_TEMPLATES = {"T5": ((), ("eos",)), "XLMRoberta": (("bos",), ("eos",)), "Camembert": (("bos",), ("eos",)),
                  "Albert": (("cls",), ("sep",)), "Llama": (("bos",), ()), "Marian": ((), ("eos",)),
                  "MBart": ((), ("eos",)), "Pegasus": ((), ("eos",)), "XLNet": ((), ("sep", "cls"))}


def _sentencepiece(raw: bytes, name: str, folder: Path, declared: dict[str, str]) -> FolderTokenizer:
    spm = _SentencePieceModel.parse(raw, name)
    vocab = {piece: k for k, (piece, _, _) in enumerate(spm.pieces)}
    by_id = {k: piece for k, (piece, _, _) in enumerate(spm.pieces)}
    own = {role: by_id[i] for role, i in (("unk", spm.unk_id), ("bos", spm.bos_id), ("eos", spm.eos_id),
                                           ("pad", spm.pad_id)) if i in by_id}
    specials = _specials({**own, **declared}, vocab, {})
    if spm.model_type == 1:  # UNIGRAM
        model: Any = models.Unigram([(piece, score) for piece, score, _ in spm.pieces],
                                    unk_id=spm.unk_id if spm.unk_id in by_id else None,
                                    byte_fallback=spm.byte_fallback)
        kind = "Unigram"
    elif spm.model_type == 2:  # BPE
        unk = {"unk_token": specials["unk"]} if "unk" in specials else {}
        model = models.BPE(vocab, _spm_merges(spm.pieces, vocab), fuse_unk=True, byte_fallback=spm.byte_fallback,
                           **unk)
        kind = "BPE"
    else:
        raise ModelError(f"{name}: SentencePiece model type {spm.model_type} (word or character) is not "
                         "read; ship a tokenizer.json or a character map")
    tok = Tokenizer(model)
    steps: list[Any] = [normalizers.Precompiled(spm.charsmap)] if spm.charsmap else []
    if spm.remove_extra_whitespaces:
        steps += [normalizers.Strip(left=False, right=True), normalizers.Replace(Regex(" {2,}"), "▁")]
    tok.normalizer = normalizers.Sequence(steps)
    scheme = "always" if spm.add_dummy_prefix else "never"
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme=scheme)
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme=scheme)
    klass = str(_tokenizer_config(folder).get("tokenizer_class") or "")
    template = next((t for prefix, t in _SPM_TEMPLATES.items() if klass.startswith(prefix)), None)
    if template is not None:
        before = [specials[r] for r in template[0] if r in specials]
        after = [specials[r] for r in template[1] if r in specials]
        if before or after:
            tok.post_processor = processors.TemplateProcessing(
                single=" ".join([*before, "$A", *after]),
                special_tokens=[(t, vocab[t]) for t in dict.fromkeys([*before, *after])])
    extra = [piece for piece, _, kind_ in spm.pieces if kind_ in (_CONTROL, _USER_DEFINED)]
    return _finish(tok, f"{name} (SentencePiece {kind})", specials, extra)


def _spm_merges(pieces: list[tuple[str, float, int]], vocab: dict[str, int]) -> list[tuple[str, str]]:
    """BPE merges recovered from a SentencePiece BPE vocabulary: every split of a piece into two
    pieces of the vocabulary, ranked by the merged piece's id (SentencePiece orders pieces by
    merge order), then by the halves' ids."""
    found = []
    for merged, _, kind in pieces:
        if kind != _NORMAL:
            continue
        local = [(merged[:k], merged[k:]) for k in range(1, len(merged))
                 if merged[:k] in vocab and merged[k:] in vocab]
        local.sort(key=lambda pair: (vocab[pair[0]], vocab[pair[1]]))
        found += [(vocab[merged], pair) for pair in local]
    found.sort(key=lambda item: item[0])
    return [pair for _, pair in found]


@dataclass(frozen=True)
class _SentencePieceModel:
    """The fields of sentencepiece_model.proto's ModelProto that a tokenizer needs."""

    pieces: list[tuple[str, float, int]]
    model_type: int
    unk_id: int
    bos_id: int
    eos_id: int
    pad_id: int
    byte_fallback: bool
    charsmap: bytes
    add_dummy_prefix: bool
    remove_extra_whitespaces: bool

    @classmethod
    def parse(cls, raw: bytes, name: str) -> _SentencePieceModel:
        try:
            top = _fields(raw)
            pieces = []
            for body in top.get(1, []):
                piece = _fields(_as_bytes(body))
                text = _as_bytes(piece.get(1, [b""])[0]).decode("utf-8")
                score = _as_float(piece.get(2, [0])[0])
                kind = _as_int(piece.get(3, [_NORMAL])[0])
                pieces.append((text, score, kind))
                if len(pieces) > MAX_VOCAB:
                    raise ModelError(f"{name} holds over {MAX_VOCAB:,} pieces")
            trainer = _fields(_as_bytes(top[2][0])) if 2 in top else {}
            norm = _fields(_as_bytes(top[3][0])) if 3 in top else {}
        except ModelError:
            raise
        except (ValueError, IndexError, UnicodeDecodeError, TypeError) as exc:
            raise ModelError(f"{name} is not a readable SentencePiece model ({type(exc).__name__})") from exc
        if not pieces:
            raise ModelError(f"{name} is not a readable SentencePiece model (no pieces)")

        def number(fields: dict[int, list[Any]], key: int, default: int) -> int:
            value = _as_int(fields[key][0]) if key in fields else default
            return value - (1 << 64) if value >= 1 << 63 else value  # int32 fields: negative as 64-bit

        return cls(
            pieces=pieces, model_type=number(trainer, 3, 1), unk_id=number(trainer, 40, 0),
            bos_id=number(trainer, 41, 1), eos_id=number(trainer, 42, 2), pad_id=number(trainer, 43, -1),
            byte_fallback=bool(number(trainer, 35, 0)),
            charsmap=_as_bytes(norm[2][0]) if 2 in norm else b"",
            add_dummy_prefix=bool(number(norm, 3, 1)), remove_extra_whitespaces=bool(number(norm, 4, 1)))


def _fields(buf: bytes) -> dict[int, list[Any]]:
    """One protobuf message's fields by number: varints as int, fixed32 as 4 bytes, length-
    delimited as bytes (groups and fixed64 refused: a SentencePiece model holds none)."""
    out: dict[int, list[Any]] = {}
    pos, end = 0, len(buf)
    while pos < end:
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        value: int | bytes
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 5:
            if pos + 4 > end:
                raise ValueError("truncated fixed32")
            value, pos = buf[pos:pos + 4], pos + 4
        elif wire == 1:
            if pos + 8 > end:
                raise ValueError("truncated fixed64")
            value, pos = buf[pos:pos + 8], pos + 8
        elif wire == 2:
            size, pos = _varint(buf, pos)
            if pos + size > end:
                raise ValueError("truncated field")
            value, pos = buf[pos:pos + size], pos + size
        else:
            raise ValueError(f"wire type {wire}")
        out.setdefault(number, []).append(value)
    return out


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise ValueError("bad varint")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def _as_bytes(value: Any) -> bytes:
    if not isinstance(value, bytes):
        raise TypeError("expected a length-delimited field")
    return value


def _as_int(value: Any) -> int:
    if not isinstance(value, int):
        raise TypeError("expected a varint")
    return value


def _as_float(value: Any) -> float:
    if not isinstance(value, bytes) or len(value) != 4:
        raise TypeError("expected a float")
    return float(struct.unpack("<f", value)[0])


# --- character maps -----------------------------------------------------------------------

def _character_form(spec: Any, folder: Path, declared: dict[str, str]) -> FolderTokenizer:
    """config.json's ``tokenizer`` object (the documented form for character-level models)."""
    where = "config.json 'tokenizer'"
    if not isinstance(spec, dict) or "characters" not in spec:
        raise ModelError(f"{where} must be an object with \"characters\" (a file name, an object "
                         "{char: id} or a list of characters in id order)")
    chars = spec["characters"]
    if isinstance(chars, str):
        raw = files.read_side_file(folder, chars)
        if raw is None:
            raise ModelError(f"{where}: {chars!r} is not a file of the model folder")
        mapping = _json_map(raw, chars)
    else:
        mapping = _map_or_list(chars, f"{where} 'characters'")
    roles = {}
    for role in ROLES:
        value = spec.get(role)
        if value is not None and not isinstance(value, str):
            raise ModelError(f"{where} {role!r} must be a token string or null")
        if isinstance(value, str):
            roles[role] = value
    lower = spec.get("lowercase", False)
    if not isinstance(lower, bool):
        raise ModelError(f"{where} 'lowercase' must be true or false")
    return _characters(mapping, folder / "config.json", {**declared, **roles}, roles, lower)


def _characters(vocab: dict[str, int], path: Path, declared: dict[str, str], explicit: dict[str, str],
                lower: bool = False, where: str = "") -> FolderTokenizer:
    """One token per character, each looked up in ``vocab``; multi-character entries are the
    special tokens (``<pad>``, ``[UNK]``, ...)."""
    guesses = {"unk": ("<unk>", "[UNK]", "<UNK>", "UNK", "<oov>", "[OOV]", "<OOV>"),
               "pad": ("<pad>", "[PAD]", "<PAD>", "PAD", "<blank>")}
    specials = dict(declared)
    for role, names in guesses.items():
        if role not in specials:
            found = next((n for n in names if n in vocab), None)
            if found is not None:
                specials[role] = found
    missing = [f"{role} {tok!r}" for role, tok in specials.items() if tok not in vocab]
    if missing:
        raise ModelError(f"{path.name}: the declared special tokens {', '.join(missing)} are not in the "
                         "character map")
    unk = specials.get("unk")
    tok = Tokenizer(models.WordLevel(vocab, unk_token=unk if unk is not None else "\x00<no unknown token>"))
    if lower:
        tok.normalizer = normalizers.Lowercase()
    # every character is its own token, spaces included: the Split keeps each match alone
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    inside = f" {where}" if where and where != "the file" else ""
    form = f"{path.name}{inside} (character map, {len(vocab):,} entries" + (", lower-cased)" if lower else ")")
    return _finish(tok, form, specials, [t for t in vocab if len(t) > 1])


def _single_characters(vocab: dict[str, int]) -> bool:
    """Every entry is one character, bracketed specials (``<pad>``, ``[UNK]``) aside, and there
    are enough of them to be an alphabet."""
    plain = [t for t in vocab if not (len(t) > 2 and t[0] in "<[" and t[-1] in ">]")]
    return len(plain) >= 2 and all(len(t) == 1 for t in plain)


# --- shared helpers -------------------------------------------------------------------------

def _finish(tok: Tokenizer, form: str, specials: dict[str, str], extra: list[str] | None = None) -> FolderTokenizer:
    """Mark the special tokens as such (they are never split or normalized), declare the pad."""
    marked = list(dict.fromkeys([*specials.values(), *(extra or [])]))
    if marked:
        tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in marked])
    pad = specials.get("pad")
    if pad is not None:
        pad_id = tok.token_to_id(pad)
        if pad_id is not None:
            tok.enable_padding(pad_id=pad_id, pad_token=pad)
    return FolderTokenizer(tok, form, specials)


def _specials(declared: dict[str, str], vocab: dict[str, int], conventional: dict[str, str]) -> dict[str, str]:
    """Declared special tokens that the vocabulary holds, then the form's conventional names
    where nothing was declared for the role."""
    out = {role: tok for role, tok in declared.items() if tok in vocab}
    for role, tok in conventional.items():
        if role not in out and role not in declared and tok in vocab:
            out[role] = tok
    return out


def _declared_specials(folder: Path) -> dict[str, str]:
    """Special tokens declared by special_tokens_map.json, then tokenizer_config.json."""
    found: dict[str, str] = {}
    for name in ("tokenizer_config.json", "special_tokens_map.json"):  # the map wins: read last
        data = files.read_side_json(folder, name)
        if not isinstance(data, dict):
            continue
        for role in ROLES:
            value = data.get(f"{role}_token")
            if isinstance(value, dict):
                value = value.get("content")
            if isinstance(value, str) and value:
                found[role] = value
    return found


def _tokenizer_config(folder: Path) -> dict[str, Any]:
    data = files.read_side_json(folder, "tokenizer_config.json")
    return data if isinstance(data, dict) else {}


def _vocab_lines(raw: bytes, name: str) -> dict[str, int]:
    vocab: dict[str, int] = {}
    for index, line in enumerate(_utf8(raw, name).split("\n")):
        token = line.rstrip("\r")
        if token:  # the id is the line's index, as BERT's own loader reads it (a repeated token: the last)
            vocab[token] = index
    if len(vocab) > MAX_VOCAB:
        raise ModelError(f"{name} holds over {MAX_VOCAB:,} tokens")
    if not vocab:
        raise ModelError(f"{name} is empty")
    return vocab


def _json_map(raw: bytes, name: str) -> dict[str, int]:
    try:
        data = json.loads(_utf8(raw, name))
    except (ValueError, RecursionError) as exc:
        raise ModelError(f"{name} is not valid JSON: {str(exc)[:200]}") from exc
    return _map_or_list(data, name)


def _map_or_list(data: Any, where: str) -> dict[str, int]:
    """``{token: id}`` with distinct non-negative integer ids, or a list of tokens in id order."""
    if isinstance(data, list):
        if not all(isinstance(t, str) for t in data):
            raise ModelError(f"{where} must list token strings")
        mapping = {t: k for k, t in enumerate(data)}
        if len(mapping) != len(data):
            raise ModelError(f"{where} lists a token twice")
        return mapping
    if not isinstance(data, dict):
        raise ModelError(f"{where} must be an object of token ids or a list of tokens")
    ids = list(data.values())
    if not all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < MAX_VOCAB for i in ids):
        raise ModelError(f"{where} must map each token to a non-negative integer id below {MAX_VOCAB:,}")
    if len(set(ids)) != len(ids):
        raise ModelError(f"{where} gives two tokens the same id")
    return {t: int(i) for t, i in data.items()}


def _utf8(raw: bytes, name: str) -> str:
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ModelError(f"{name} is not UTF-8 text") from exc


def _bad(path: Path, exc: BaseException) -> ModelError:
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
    return ModelError(f"cannot read {str(path)!r}: {first}")
