"""Compare blackbox-sal's grad x input with a framework's own gradients (reference.npz).

    python models/compare_reference.py models/.cache/jax-cnn [more model dirs] [--backend auto|graph|fd]

For each of the reference texts, explains the text with ``method="grad-x-input"``,
``reduce="sum"`` (per token: sum over the embedding dimensions of gradient x embedding) and the
reference's target class, and compares the token scores with the framework's own
``(grad * embeddings).sum(-1)`` over the text's tokens (``lengths``; all ``input_ids``
positions where the model reads padding). Prints, per text, the backend used, the largest
absolute difference relative to the largest reference score, and the Pearson correlation.
Only models whose reference holds ``embeddings`` (token-embedding models) can be compared.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def compare(folder: Path, backend: str) -> None:
    import blackbox_sal as bs

    ref = np.load(folder / "reference.npz")
    if "embeddings" not in ref.files or ref["target"].size == 0:
        print(f"{folder.name}: nothing to compare (no token embeddings or no target class)")
        return
    model = bs.load_model(folder)
    for i, text in enumerate(ref["texts"]):
        n = int(ref["lengths"][i])
        expected = (ref["grad"][i, :n] * ref["embeddings"][i, :n]).sum(-1)
        config = bs.ExplainConfig(method="grad-x-input", reduce="sum", backend=backend,
                                  target=model.label(int(ref["target"][i])) or str(int(ref["target"][i])))
        result = bs.explain(model, str(text), config)
        got = np.array([t.score for t in result.tokens])
        if got.shape != expected.shape:
            print(f"{folder.name} text {i}: {got.size} tokens vs {expected.size} in the reference")
            continue
        rel = np.abs(got - expected).max() / max(np.abs(expected).max(), 1e-12)
        corr = np.corrcoef(got, expected)[0, 1] if n > 1 else float("nan")
        print(f"{folder.name} text {i}: backend {result.backend}, {n} tokens, max |diff| / max |ref| = {rel:.2e}, "
              f"Pearson {corr:.6f}, f(x) {result.target_value:.5f} vs {float(ref['outputs'][i, ref['target'][i]]):.5f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+")
    ap.add_argument("--backend", default="auto")
    args = ap.parse_args()
    for m in args.models:
        compare(Path(m), args.backend)


if __name__ == "__main__":
    main()
