"""Write the prepared copy of the bundled default model: ``models/sentiment-cnn/prepared/``.

An edge install (onnxruntime, numpy and tokenizers, no onnx) cannot split a model at its
embedding lookup or build its gradient graph; it loads prepared folders only. The default model
therefore ships prepared too (3.3 MB: the split body, the embedding table, the verified
gradient graph, the tokenizer and config.json), packaged into the wheel beside the original as
``blackbox_sal/default_model/prepared`` (pyproject.toml's force-include). ``default_model_path``
picks it where onnx is not installed, so the edge profile's first command explains the
default model as the full install does. Rerun this after ``train_sentiment_cnn.py``;
``tests/test_prepared_default.py`` fails while the copy is stale.

    python models/prepare_default.py        # needs onnx: the full install
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from blackbox_sal import load_model, prepare  # noqa: E402

ORIGINAL = HERE / "sentiment-cnn"
PREPARED = ORIGINAL / "prepared"


def main() -> None:
    shutil.rmtree(PREPARED, ignore_errors=True)
    prepare(load_model(ORIGINAL), PREPARED)
    total = sum(p.stat().st_size for p in PREPARED.iterdir())
    print(f"wrote {PREPARED} ({total / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
