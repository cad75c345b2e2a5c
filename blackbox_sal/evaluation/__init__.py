"""Is an explanation any good, and what does the model rely on across a dataset: global
analysis (the paper's sections 5.2 and 5.3), faithfulness, sanity checks, and the one-hot view
of token substitutions."""

from __future__ import annotations

import importlib
from types import ModuleType

#: the analyses, one module each (imported when first used: sanity needs onnx, plots matplotlib)
__all__ = ["faithfulness", "global_analysis", "sanity", "swaps"]


def __getattr__(name: str) -> ModuleType:
    if name in __all__:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
