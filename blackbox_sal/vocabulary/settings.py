"""The settings spec's machinery: one :class:`Setting` per option, and everything derived from
a table of them: value checks (the config objects' ``validated``), the command line's options
(argparse), the server's checks of request parameters, their JSON schema (OpenAPI), and the
markdown reference (``docs/cli.md``). The table itself is in :mod:`blackbox_sal.vocabulary.config`.

A dataclass table of our own, not pydantic or msgspec: neither derives argparse options or the
reference, our types are a handful (numbers in ranges, names, flags), and pydantic 2.14 would
add 7.4 MB installed (5.4 of it pydantic-core) and 0.12-0.23 s of import (``-X importtime``,
this 2-core machine under load) to an edge install of onnxruntime, numpy and tokenizers.

A setting's *kind* says what its values are. Each kind gives the four faces of a value:

=============  ===========================  ==================  =============================
kind           Python value                 command line        JSON (request, schema)
=============  ===========================  ==================  =============================
Integer        int in [low, high]           ``type=int``        integer, minimum/maximum
Number         finite float in a range      ``type=float``      number, (exclusive) bounds
Flag           bool                         ``store_true``      boolean
Switch         bool or None                 ``--x/--no-x``      boolean or null
Choice         one name of a list           ``choices=``        enum
Text           a string (valid Unicode)     a string            string
FilePath       a path (any string)          a string            string
Steps          int in [1, high] or "auto"   ``N|auto``          integer or "auto"
Label          class label or index         a string            string or integer
Vector         tuple of finite floats       a FILE of numbers   array of numbers
=============  ===========================  ==================  =============================

``nullable`` settings also take None (JSON null): "decided at run time", as their help says.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from blackbox_sal.vocabulary.errors import UsageError, unknown_choice

#: ``steps="auto"``: integrated gradients add nested nodes until they converge
AUTO = "auto"
#: the largest magnitude a float32 holds (a direction's values reach the model as float32)
FLOAT32_MAX = 3.4028234663852886e38


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _count(v: float) -> str:
    return f"{v:,}" if isinstance(v, int) else f"{v:g}"


@dataclass(frozen=True)
class Kind:
    """What a setting's values are (see the module docstring); subclasses override the faces."""

    #: the JSON types a request parameter may have, and how an error names them
    json_what = "a string"

    def check(self, label: str, value: Any) -> Any:
        """``value``, converted where needed; UsageError naming ``label`` otherwise."""
        return value

    def json_ok(self, value: Any) -> bool:
        return isinstance(value, str)

    def from_json(self, value: Any) -> Any:
        return value

    def schema(self) -> dict[str, Any]:
        return {"type": "string"}

    def parse(self, text: str) -> Any:
        """The argparse ``type`` (a ValueError or ArgumentTypeError is argparse's exit 2)."""
        return text

    def describe(self) -> str:
        """The reference's "value" column."""
        return "text"

    def argparse(self) -> dict[str, Any]:
        return {"type": self.parse}


@dataclass(frozen=True)
class Integer(Kind):
    low: int = 1
    high: int | None = None
    json_what = "an integer"

    def _range(self) -> str:
        return f"from {self.low:,} to {self.high:,}" if self.high is not None else f">= {self.low:,}"

    def check(self, label: str, value: Any) -> Any:
        if (isinstance(value, bool) or not isinstance(value, int) or value < self.low
                or (self.high is not None and value > self.high)):
            raise UsageError(f"{label} must be an integer {self._range()}, got {value!r}")
        return value

    def json_ok(self, value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool)

    def schema(self) -> dict[str, Any]:
        return {"type": "integer", "minimum": self.low, **({"maximum": self.high} if self.high is not None else {})}

    def parse(self, text: str) -> Any:
        return int(text)

    def describe(self) -> str:
        return f"integer {self.low:,} .. {self.high:,}" if self.high is not None else f"integer >= {self.low:,}"


@dataclass(frozen=True)
class Number(Kind):
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    json_what = "a number"

    def _range(self) -> str:
        if self.low is not None and self.high is not None:
            if self.low_open or self.high_open:
                return f"in {'(' if self.low_open else '['}{_count(self.low)}, {_count(self.high)}" \
                       f"{')' if self.high_open else ']'}"
            return f"from {_count(self.low)} to {_count(self.high)}"
        if self.low is not None:
            return f"a finite number {'>' if self.low_open else '>='} {_count(self.low)}"
        return "a finite number"

    def check(self, label: str, value: Any) -> Any:
        if not _number(value):
            raise UsageError(f"{label} must be a number, got {value!r}")
        ok = math.isfinite(value)
        if self.low is not None:
            ok = ok and (value > self.low if self.low_open else value >= self.low)
        if self.high is not None:
            ok = ok and (value < self.high if self.high_open else value <= self.high)
        if not ok:
            raise UsageError(f"{label} must be {self._range()}, got {value!r}")
        return value

    def json_ok(self, value: Any) -> bool:
        return _number(value)

    def schema(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": "number"}
        if self.low is not None:
            out["exclusiveMinimum" if self.low_open else "minimum"] = self.low
        if self.high is not None:
            out["exclusiveMaximum" if self.high_open else "maximum"] = self.high
        return out

    def parse(self, text: str) -> Any:
        return float(text)

    def describe(self) -> str:
        r = self._range()
        return "number " + (r.removeprefix("a finite number ") if r.startswith("a finite number") else r)


@dataclass(frozen=True)
class Flag(Kind):
    json_what = "true or false"

    def check(self, label: str, value: Any) -> Any:
        if not isinstance(value, bool):
            raise UsageError(f"{label} must be true or false, got {value!r}")
        return value

    def json_ok(self, value: Any) -> bool:
        return isinstance(value, bool)

    def schema(self) -> dict[str, Any]:
        return {"type": "boolean"}

    def describe(self) -> str:
        return "flag"

    def argparse(self) -> dict[str, Any]:
        return {"action": "store_true"}


@dataclass(frozen=True)
class Switch(Flag):
    """A flag with an explicit no (``--x`` / ``--no-x``), None when neither is given."""

    def describe(self) -> str:
        return "flag (--no- to turn off)"

    def argparse(self) -> dict[str, Any]:
        return {"action": argparse.BooleanOptionalAction}


@dataclass(frozen=True)
class Choice(Kind):
    """One of ``names``; ``what`` names the list in errors ("unknown method 'x'"). ``names`` is a
    tuple, or a registry of names (:mod:`blackbox_sal.vocabulary.choices`) read when checked, whose
    values' summaries are listed in the help."""

    names: tuple[str, ...] | Mapping[str, Any] = ()
    what: str = ""

    @property
    def choices(self) -> tuple[str, ...]:
        return tuple(self.names)

    @property
    def summaries(self) -> tuple[tuple[str, str], ...]:
        if isinstance(self.names, tuple):
            return ()
        return tuple((name, str(getattr(v, "summary", v))) for name, v in self.names.items())

    def check(self, label: str, value: Any) -> Any:
        if not isinstance(value, str) or value not in self.names:
            raise unknown_choice(self.what or label, str(value), self.choices)
        return value

    def schema(self) -> dict[str, Any]:
        return {"enum": list(self.choices)}

    def describe(self) -> str:
        return " \\| ".join(self.choices)

    def argparse(self) -> dict[str, Any]:
        return {"choices": list(self.choices)}


@dataclass(frozen=True)
class Text(Kind):
    """A string that is valid Unicode; ``blank`` whether an empty or blank one is allowed,
    ``refusal`` what an error says one must be."""

    blank: bool = True
    refusal: str = ""

    def check(self, label: str, value: Any) -> Any:
        if not isinstance(value, str) or (not self.blank and not value.strip()):
            raise UsageError(f"{label} must be {self.refusal or 'a string'}")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate (undecodable bytes in argv arrive as such)
            raise UsageError(f"{label} is not valid Unicode (a lone surrogate)") from None
        return value

    def schema(self) -> dict[str, Any]:
        return {"type": "string"} if self.blank else {"type": "string", "pattern": "\\S"}


@dataclass(frozen=True)
class FilePath(Text):
    """A file or folder path: any string (undecodable bytes of a POSIX file name arrive as
    lone surrogates, and name the file all the same)."""

    def check(self, label: str, value: Any) -> Any:
        if not isinstance(value, str) or not value:
            raise UsageError(f"{label} must be a path")
        return value

    def describe(self) -> str:
        return "path"


@dataclass(frozen=True)
class Steps(Kind):
    high: int = 1024
    json_what = "an integer or 'auto'"

    def check(self, label: str, value: Any) -> Any:
        if value != AUTO and (isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= self.high):
            raise UsageError(f"{label} must be an integer from 1 to {self.high:,} or 'auto', got {value!r}")
        return value

    def json_ok(self, value: Any) -> bool:
        return isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))

    def schema(self) -> dict[str, Any]:
        return {"oneOf": [{"type": "integer", "minimum": 1, "maximum": self.high}, {"const": AUTO}]}

    def parse(self, text: str) -> Any:
        if text == AUTO:
            return AUTO
        try:
            return int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number of nodes or 'auto', got {text!r}") from None

    def describe(self) -> str:
        return f"integer 1 .. {self.high:,} \\| auto"


@dataclass(frozen=True)
class Label(Kind):
    json_what = "a label, an index"

    def check(self, label: str, value: Any) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            raise UsageError(f"{label} must be a label or an index, got {value!r}")
        return value

    def json_ok(self, value: Any) -> bool:
        return isinstance(value, str | int) and not isinstance(value, bool)

    def schema(self) -> dict[str, Any]:
        return {"type": ["string", "integer"]}

    def describe(self) -> str:
        return "label \\| index"


@dataclass(frozen=True)
class Vector(Kind):
    """Numbers, not all zero, within float32's range; on the command line a FILE of them."""

    most: int = 1_000_000
    json_what = "a list of numbers"

    def check(self, label: str, value: Any) -> Any:
        if (not isinstance(value, tuple) or not value or len(value) > self.most
                or not all(_number(v) and abs(v) <= FLOAT32_MAX and math.isfinite(v) for v in value)
                or not any(value)):
            raise UsageError(f"{label} must be 1 to {self.most:,} finite numbers within float32's range "
                             f"(|v| <= {FLOAT32_MAX:.4g}), not all zero")
        return value

    def json_ok(self, value: Any) -> bool:
        return isinstance(value, list)

    def from_json(self, value: Any) -> Any:
        if not all(_number(v) for v in value):
            raise UsageError("direction must be a list of numbers")
        return tuple(value)

    def schema(self) -> dict[str, Any]:
        return {"type": "array", "minItems": 1, "maxItems": self.most, "items": {"type": "number"},
                "contains": {"not": {"const": 0}}}

    def describe(self) -> str:
        return "FILE of numbers (.npy or text)"


@dataclass(frozen=True)
class Setting:
    """One setting: what it is, its default, its help, and where it is taken.

    name: the config field, request parameter and argparse dest. owner: the config object
    holding it (``ExplainConfig``, ``Limits``), or "" for a command's own option. commands:
    the subcommands that take it as ``flag`` (default ``--name-with-dashes``). request: the
    server's explain and predict routes take it in ``parameters``. nullable: None is a value
    (decided at run time). shown_default: how the default reads in help, where not the value.
    append: may be given several times (a list). exclusive: the mutually exclusive group.
    dest: the argparse dest, where not the flag's (``--method`` of eval is ``methods``).
    """

    name: str
    kind: Kind
    help: str
    default: Any = None
    owner: str = ""
    commands: tuple[str, ...] = ()
    request: bool = False
    nullable: bool = False
    shown_default: str | None = None
    flag: str | None = None
    short: str | None = None
    metavar: str | None = None
    required: bool = False
    append: bool = False
    exclusive: str | None = None
    dest: str | None = None

    @property
    def option(self) -> str:
        return self.flag or "--" + self.name.replace("_", "-")

    def check(self, value: Any, label: str | None = None) -> Any:
        """The value, checked (None passes where nullable); UsageError otherwise."""
        if value is None and (self.nullable or self.default is None):
            return None
        if self.append and isinstance(value, list):
            return [self.kind.check(label or self.name, v) for v in value]
        return self.kind.check(label or self.name, value)

    def default_text(self) -> str | None:
        """The default as help shows it (None: no default worth showing)."""
        if self.shown_default is not None:
            return self.shown_default
        if self.default is None or (isinstance(self.kind, Flag) and self.default is False):
            return None
        return f"{self.default:g}" if isinstance(self.default, float) else str(self.default)

    def help_text(self, default: bool = True) -> str:
        """The help line: the help, the choices' summaries, and (``default``) the default."""
        text = self.help
        if isinstance(self.kind, Choice) and self.kind.summaries:
            text += ": " + "; ".join(f"{n} = {s}" for n, s in self.kind.summaries)
        shown = self.default_text() if default else None
        return text + (f" (default: {shown})" if shown is not None else "")

    def json_schema(self, default: Any = None) -> dict[str, Any]:
        """The request parameter's JSON schema, with ``default`` (the server's) where given."""
        schema = self.kind.schema()
        if self.nullable:
            schema = {"anyOf": [schema, {"type": "null"}]}
        schema = {**schema, "description": self.help}
        if default is not None:
            schema["default"] = list(default) if isinstance(default, tuple) else default
        return schema


def setting(default: Any, kind: Kind, help: str, **options: Any) -> Any:
    """A config dataclass field that is a spec entry: ``name: T = setting(default, kind, help, ...)``
    (the name and owner are filled in by :func:`fields_of`)."""
    return field(default=default, metadata={"setting": Setting("", kind, help, default, **options)})


def fields_of(cls: type) -> tuple[Setting, ...]:
    """The spec entries of a config dataclass, in field order."""
    out = []
    for f in dataclasses.fields(cls):
        entry = f.metadata.get("setting")
        if entry is None:
            raise TypeError(f"{cls.__name__}.{f.name} is not a setting (declare it with settings.setting)")
        out.append(dataclasses.replace(entry, name=f.name, owner=cls.__name__))
    return tuple(out)


def validate(obj: Any, label: Callable[[Setting], str] | None = None) -> None:
    """Check every field of a config dataclass against its entry (UsageError naming the first
    bad one: by ``label``, default the field name)."""
    for entry in fields_of(type(obj)):
        entry.check(getattr(obj, entry.name), label(entry) if label else None)


def request_value(entry: Setting, value: Any) -> Any:
    """A request parameter's JSON value, in the config's type; UsageError for the wrong JSON
    type (the config's ``validated`` checks the value itself)."""
    if value is None and entry.nullable:
        return None
    if not entry.kind.json_ok(value):
        what = entry.kind.json_what + (" or null" if entry.nullable else "")
        raise UsageError(f"parameter {entry.name} must be {what}, got {json.dumps(value)[:80]}")
    return entry.kind.from_json(value)


def add_options(parser: argparse.ArgumentParser, command: str, spec: Iterable[Setting]) -> None:
    """Add every option of ``command`` from the spec to its parser, in spec order."""
    for entry in spec:
        if command not in entry.commands:
            continue
        names = [entry.option] + ([entry.short] if entry.short else [])
        kwargs = {**entry.kind.argparse(), "dest": dest_of(entry),
                  "help": entry.help_text().replace("%", "%%")}
        if entry.append:
            kwargs["action"] = "append"
        elif not isinstance(entry.kind, Flag) or isinstance(entry.kind, Switch):
            kwargs["default"] = entry.default
        if entry.metavar is not None:
            kwargs["metavar"] = entry.metavar
        if entry.required:
            kwargs["required"] = True
        parser.add_argument(*names, **kwargs)


def dest_of(entry: Setting) -> str:
    """Where argparse puts an option: its ``dest``, else its flag's name (``--top`` of swaps,
    the entry ``swaps_top``, is ``top``: what the command reads)."""
    return entry.dest or entry.option.lstrip("-").replace("-", "_")


def conflict(args: argparse.Namespace, command: str, spec: Iterable[Setting]) -> str | None:
    """Two options of one ``exclusive`` group given together: argparse's words for it (argparse's
    own groups are not used: on Python 3.11 a long usage line with one raises ValueError)."""
    given: dict[str, Setting] = {}
    for entry in spec:
        if command in entry.commands and entry.exclusive is not None and getattr(args, dest_of(entry)) is not None:
            first = given.setdefault(entry.exclusive, entry)
            if first is not entry:
                names = "/".join([first.option, *([first.short] if first.short else [])])
                return f"argument {entry.option}: not allowed with argument {names}"
    return None


def check_options(args: argparse.Namespace, command: str, spec: Iterable[Setting]) -> None:
    """Check the command's own options (not a config object's: those check themselves)."""
    for entry in spec:
        if command in entry.commands and not entry.owner:
            value = getattr(args, dest_of(entry), None)
            if value is not None:
                entry.check(value, entry.option)


def markdown(spec: Sequence[Setting], descriptions: dict[str, str],
             shared: Sequence[tuple[str, str, Sequence[Setting]]]) -> str:
    """The reference: the ``shared`` groups of options (title, intro, entries) with the
    commands that take each, then per command its description and its own options, then the
    server's request parameters."""

    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    def row(entry: Setting, *first: str) -> str:
        names = entry.option + (f", {entry.short}" if entry.short else "")
        kind = (entry.metavar if isinstance(entry.kind, Text) and entry.metavar else entry.kind.describe()) + (
            ", repeatable" if entry.append else "")
        default = "required" if entry.required else (entry.default_text() or "")
        return "| " + " | ".join([*first, f"`{names}`", cell(kind), cell(default), cell(entry.help_text(False))]) + " |"

    lines = ["# Command-line reference", "",
             "Generated from the settings spec (`blackbox_sal/vocabulary/config.py`) by "
             "`python -m blackbox_sal.vocabulary.config --markdown > docs/cli.md`; a test fails when the two differ. "
             "Every command also takes `--help`. Exit codes: 0 ok, 2 bad usage or input, 3 model cannot be "
             "loaded or used, 4 backend or device not available, 5 a model run passed --timeout, 1 internal error "
             "(a bug), 130 interrupted.", ""]
    grouped = {id(e) for _, _, entries in shared for e in entries}
    for title, intro, entries in shared:
        lines += [f"## {title}", "", intro, "", "| option | value | default | what it does | commands |",
                  "|---|---|---|---|---|"]
        for entry in entries:
            if entry.commands:
                lines.append(row(entry)[:-2] + " | " + ", ".join(entry.commands) + " |")
        lines.append("")
    for command, description in descriptions.items():
        own = [e for e in spec if command in e.commands and id(e) not in grouped]
        takes = [title.lower() for title, _, entries in shared if any(command in e.commands for e in entries)]
        lines += [f"## `blackbox-sal {command}`", "", description, ""]
        if takes:
            lines += [f"Takes the {' and the '.join(takes)} above" + (", and:" if own else "."), ""]
        if own:
            lines += ["| option | value | default | what it does |", "|---|---|---|---|"]
            lines += [row(e) for e in own]
            lines.append("")
    lines += ["## Server request parameters", "",
              "The explain and predict routes (`/v1/models/NAME:explain`, `:predict`, `/v2/models/NAME/infer`, "
              "`/v2/models/NAME-explainer/infer`) take these in the body's `\"parameters\"` object, the options "
              "without dashes; the server's options are their defaults. `/openapi.json` gives the same as a JSON "
              "schema.", "", "| parameter | value | what it does |", "|---|---|---|"]
    for entry in spec:
        if entry.request:
            kind = entry.kind.describe() + (" \\| null" if entry.nullable else "")
            lines.append(f"| `{entry.name}` | {kind} | {cell(entry.help)} |")
    return "\n".join(lines) + "\n"
