"""Compare blackbox-sal's grad x input with a framework's own gradients (reference.npz).

    python models/compare_reference.py models/.cache/jax-cnn [more model dirs] [--backend auto|graph|fd]

For each of the reference texts, explains the text with ``method="grad-x-input"``,
``reduce="sum"`` (per token: sum over the embedding dimensions of gradient x embedding) and the
reference's target class, and compares the token scores with the framework's own
``(grad * embeddings).sum(-1)`` over the text's tokens (``lengths``; all ``input_ids``
positions where the model reads padding). Prints, per text, the backend used, the largest
absolute difference relative to the largest reference score, and the Pearson correlation.
A sentence encoder (``output_kind`` cosine) is compared through the cosine to the reference's
``other_text``, the first text's side; a scikit-learn pipeline (a ``bow`` reference) feature by
feature: the word scores of each feature summed, against ``bow * grad`` at the features present.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def compare(folder: Path, backend: str) -> None:
    import blackbox_sal as bs

    ref = np.load(folder / "reference.npz")
    model = bs.load_model(folder)
    if "bow" in ref.files:
        compare_features(folder, model, ref, backend)
        return
    if str(ref["output_kind"]) == "cosine":
        compare_cosine(folder, model, ref, backend)
        return
    if "embeddings" not in ref.files or ref["target"].size == 0:
        print(f"{folder.name}: nothing to compare (no token embeddings or no target class)")
        return
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


def compare_cosine(folder: Path, model: object, ref: np.lib.npyio.NpzFile, backend: str) -> None:
    import blackbox_sal as bs

    for i, text in enumerate(ref["texts"]):
        n = int(ref["lengths"][i])
        expected = (ref["grad"][i, :n] * ref["embeddings"][i, :n]).sum(-1)
        sim = bs.explain_similarity(model, str(text), str(ref["other_text"]),  # type: ignore[arg-type]
                                    bs.ExplainConfig(method="grad-x-input", backend=backend))
        got = np.array([t.score for t in sim.texts[0].tokens])
        rel = np.abs(got - expected).max() / max(np.abs(expected).max(), 1e-12)
        print(f"{folder.name} text {i}: backend {sim.texts[0].backend}, {n} tokens, max |diff| / max |ref| = "
              f"{rel:.2e}, Pearson {np.corrcoef(got, expected)[0, 1]:.6f}, cosine {sim.cosine:.5f} vs "
              f"{float(ref['outputs'][i]):.5f}")


def compare_features(folder: Path, model: object, ref: np.lib.npyio.NpzFile, backend: str) -> None:
    import blackbox_sal as bs

    for i, text in enumerate(ref["texts"]):
        target = int(ref["target"][i])
        config = bs.ExplainConfig(method="grad-x-input", backend=backend, score="logit",
                                  target=model.label(target) or str(target))  # type: ignore[attr-defined]
        result = bs.explain(model, str(text), config)  # type: ignore[arg-type]
        _, pieces = model.features.featurize(str(text))  # type: ignore[attr-defined]
        got = np.zeros(ref["bow"].shape[1])
        for piece, token in zip(pieces, result.tokens, strict=True):
            if piece.feature is not None:
                got[piece.feature] += token.score
        present = ref["bow"][i] != 0
        expected = (ref["bow"][i] * ref["grad"][i])[present]
        rel = np.abs(got[present] - expected).max() / max(np.abs(expected).max(), 1e-12)
        print(f"{folder.name} text {i}: backend {result.backend}, {int(present.sum())} features, max |diff| / "
              f"max |ref| = {rel:.2e}, Pearson {np.corrcoef(got[present], expected)[0, 1]:.6f}, "
              f"f(x) {result.target_value:.5f} vs {float(ref['outputs'][i, target]):.5f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+")
    ap.add_argument("--backend", default="auto")
    args = ap.parse_args()
    for m in args.models:
        compare(Path(m), args.backend)


if __name__ == "__main__":
    main()
