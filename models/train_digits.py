"""Train and export ``digits-mlp`` and ``digits-logreg``: the paper's section 5.3 in small, with reference numbers.

Section 5.3 of "Interpretation of Prediction Models Using the Input Gradient" fits a fully
connected network on MNIST, "calculate[s] the Jacobian values of the fully connected network
over the test set and take[s] the average in a similar way to Example 5.2", and draws the
average Jacobian of each class beside the weights of a logistic regression. The paper averages
over the *whole* test set (as 5.2 does), not only over the images of class c; both are given here.

Data: scikit-learn's bundled digits (``load_digits``: 1,797 images of 8x8 pixels, integer values
0..16), stratified split ``train_test_split(test_size=0.2, random_state=0)``: 1,437 training and
360 test images (the test indices are in ``reference.json``).

Inputs are **not** rescaled by the caller: both ONNX models take ``pixels`` [batch, 64] float32
with the raw values 0..16 (row-major 8x8, as ``load_digits().data`` gives them) and divide by 16
inside the graph; both train on pixels / 16. Gradients and Jacobians below are with respect to
the raw 0..16 pixels, i.e. with respect to the ONNX input. Output ``logits`` [batch, 10],
class c = digit c. ONNX opset 17, ``dynamo=False``, dynamic batch.

- ``digits-mlp``: pixels / 16 -> Linear(64, 128) -> ReLU -> Linear(128, 64) -> ReLU ->
  Linear(64, 10); Adam (lr 1e-3, weight decay 1e-4), batch 32, 60 epochs, torch.
- ``digits-logreg``: scikit-learn ``LogisticRegression`` (multinomial, L2, C = 1, lbfgs) on
  pixels / 16, exported as one linear layer: logits = (pixels / 16) @ coef.T + intercept
  (the decision function, checked against scikit-learn). Its Jacobian is coef / 16 everywhere.

Reference numbers (``digits-mlp/reference.json``; the Jacobians in ``reference_arrays.npz``),
torch autograd on the 360 test images:

- ``J_all[c]`` = mean over all test images of d logits[c] / d pixels (the paper's average);
  ``J_own[c]`` = the same mean over the test images of digit c only. Shapes [10, 64].
- Pearson correlation of ``J_all[c]`` (and of ``J_own[c]``) with the logistic regression's weight
  vector ``coef[c]``, per class and averaged over the ten classes; ``raw`` compares the vectors as
  they are, ``centered`` after subtracting the mean over classes from each (softmax logits are
  defined up to a class-independent term, so only differences between classes are identified;
  scikit-learn's L2-penalized coefficients are already centered).

Also ``digits-mlp/jacobian_vs_logreg.png`` (when matplotlib is installed): three rows of ten 8x8
images, J_all, J_own and the logistic regression weights, each in its own symmetric colour scale
(red positive, blue negative).

    python models/train_digits.py       # ~20 s on 2 cores

Needs torch (``pip install torch==2.13.0``), scikit-learn, numpy, onnx, onnxruntime; matplotlib
optional. Writes ``models/digits-mlp/`` and ``models/digits-logreg/`` (``model.onnx``,
``config.json``, ``reference.json``), and the test split as ``models/.cache/digits/test.npz``
(``pixels``, ``labels``, ``indices``) and ``test.csv`` (columns p0..p63, label).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
SEED = 0
SCALE = 16.0  # load_digits' pixel maximum; the models divide by it
N_CLASSES = 10


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    return float(a @ b / np.sqrt((a @ a) * (b @ b)))


def correlations(jac: np.ndarray, weights: np.ndarray) -> dict[str, dict[str, Any]]:
    """Per-class and mean Pearson correlation of [10, 64] Jacobians with [10, 64] weights, raw and centered."""
    out: dict[str, dict[str, Any]] = {}
    for name, (j, w) in {"raw": (jac, weights),
                         "centered": (jac - jac.mean(0), weights - weights.mean(0))}.items():
        per = [pearson(j[c], w[c]) for c in range(N_CLASSES)]
        out[name] = {"per_class": [round(r, 4) for r in per], "mean": round(float(np.mean(per)), 4)}
    return out


def export(module, example, path: Path) -> None:
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        onnx_tmp = Path(tmp) / "model.onnx"
        torch.onnx.export(
            module, (example,), str(onnx_tmp),
            input_names=["pixels"], output_names=["logits"],
            dynamic_axes={"pixels": {0: "batch"}, "logits": {0: "batch"}},
            opset_version=17, dynamo=False,
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(onnx_tmp.read_bytes())


def write_config(out: Path, name: str, description: str, test_acc: float) -> None:
    config = {
        "name": name,
        "model_type": name,
        "id2label": {str(i): str(i) for i in range(N_CLASSES)},
        "label2id": {str(i): i for i in range(N_CLASSES)},
        "input_kind": "features",
        "num_features": 64,
        "image_shape": [8, 8],
        "input_range": [0.0, SCALE],
        "description": description,
        "test_accuracy": round(test_acc, 4),
    }
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")


def draw(path: Path, rows: list[tuple[str, np.ndarray]]) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no PNG")
        return False
    fig, axes = plt.subplots(len(rows), N_CLASSES, figsize=(N_CLASSES * 1.1, len(rows) * 1.25))
    for r, (title, arr) in enumerate(rows):
        for c in range(N_CLASSES):
            ax = axes[r, c]
            lim = float(np.abs(arr[c]).max()) or 1.0
            ax.imshow(arr[c].reshape(8, 8), cmap="bwr", vmin=-lim, vmax=lim)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(str(c))
            if c == 0:
                ax.set_ylabel(title, fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return True


def main() -> None:
    import onnxruntime as ort
    import torch
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from torch import nn

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--hidden", type=int, nargs="+", default=[128, 64])
    ap.add_argument("--out", default=str(HERE), help="folder that receives digits-mlp/ and digits-logreg/")
    args = ap.parse_args()
    out_mlp, out_lr = Path(args.out) / "digits-mlp", Path(args.out) / "digits-logreg"

    torch.manual_seed(SEED)
    torch.set_num_threads(2)
    digits = load_digits()
    x_all = digits.data.astype(np.float32)  # [1797, 64], 0..16
    y_all = digits.target.astype(np.int64)
    idx_tr, idx_te = train_test_split(np.arange(len(y_all)), test_size=0.2, stratify=y_all, random_state=SEED)
    idx_tr, idx_te = np.sort(idx_tr), np.sort(idx_te)
    xtr, ytr, xte, yte = x_all[idx_tr], y_all[idx_tr], x_all[idx_te], y_all[idx_te]

    class Scaled(nn.Module):
        """pixels (0..16) -> pixels / 16 -> net."""

        def __init__(self, net: nn.Module) -> None:
            super().__init__()
            self.net = net

        def forward(self, pixels: torch.Tensor) -> torch.Tensor:
            return self.net(pixels / SCALE)

    # --- (a) the MLP ---------------------------------------------------------------------------
    layers: list[nn.Module] = []
    d = 64
    for h in args.hidden:
        layers += [nn.Linear(d, h), nn.ReLU()]
        d = h
    mlp = Scaled(nn.Sequential(*layers, nn.Linear(d, N_CLASSES)))
    opt = torch.optim.Adam(mlp.parameters(), lr=1e-3, weight_decay=1e-4)
    txtr, tytr, txte, tyte = map(torch.from_numpy, (xtr, ytr, xte, yte))
    gen = torch.Generator().manual_seed(SEED)
    for _ in range(args.epochs):
        mlp.train()
        perm = torch.randperm(len(tytr), generator=gen)
        for b in range(0, len(perm), 32):
            idx = perm[b : b + 32]
            loss = nn.functional.cross_entropy(mlp(txtr[idx]), tytr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    mlp.eval()
    with torch.no_grad():
        acc_mlp = float((mlp(txte).argmax(1) == tyte).float().mean())

    # --- (b) logistic regression -----------------------------------------------------------------
    logreg = LogisticRegression(C=1.0, max_iter=5000).fit(xtr / SCALE, ytr)
    acc_lr = float(logreg.score(xte / SCALE, yte))
    lin = nn.Linear(64, N_CLASSES)
    with torch.no_grad():
        lin.weight.copy_(torch.from_numpy(logreg.coef_.astype(np.float32)))
        lin.bias.copy_(torch.from_numpy(logreg.intercept_.astype(np.float32)))
    lr_module = Scaled(lin).eval()
    print(f"test accuracy on {len(yte)} images (train {len(ytr)}): MLP {acc_mlp:.4f}, logistic regression {acc_lr:.4f}")

    # --- per-class average Jacobians (autograd) --------------------------------------------------
    def jacobians(module: nn.Module, x: np.ndarray) -> np.ndarray:
        """[N, 10, 64]: d logits[n, c] / d pixels[n] (rows are independent, so one grad per class)."""
        xt = torch.from_numpy(x).requires_grad_(True)
        logits = module(xt)
        rows = [torch.autograd.grad(logits[:, c].sum(), xt, retain_graph=True)[0] for c in range(N_CLASSES)]
        return torch.stack(rows, 1).numpy().astype(np.float64)

    jac = jacobians(mlp, xte)
    j_all = jac.mean(0)  # [10, 64]
    j_own = np.stack([jac[yte == c, c].mean(0) for c in range(N_CLASSES)])
    weights = logreg.coef_.astype(np.float64)  # per unit of pixels / 16; Pearson ignores the 1/16
    # the exported logistic model's Jacobian is its weights / 16, exactly (a check of the export path)
    jac_lr = jacobians(lr_module, xte[:5])
    if not np.allclose(jac_lr, weights[None] / SCALE, atol=1e-6):
        raise SystemExit("logistic regression Jacobian != coef / 16")
    corr_all = correlations(j_all, weights)
    corr_own = correlations(j_own, weights)
    print("Pearson(MLP mean Jacobian over all test images, logreg weights): "
          f"raw mean {corr_all['raw']['mean']:.4f}, centered mean {corr_all['centered']['mean']:.4f}")
    print("Pearson(MLP mean Jacobian over test images of the class, logreg weights): "
          f"raw mean {corr_own['raw']['mean']:.4f}, centered mean {corr_own['centered']['mean']:.4f}")

    # --- export and checks ---------------------------------------------------------------------
    for module, out, name, torch_logits in (
        (mlp, out_mlp, "digits-mlp", None),
        (lr_module, out_lr, "digits-logreg", logreg.decision_function(xte / SCALE)),
    ):
        export(module, txte[:2], out / "model.onnx")
        sess = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
        got = sess.run(["logits"], {"pixels": xte})[0]
        if torch_logits is None:
            with torch.no_grad():
                torch_logits = module(txte).numpy()
        err = float(np.abs(got - torch_logits).max())
        print(f"{name}: onnxruntime vs {'torch' if name == 'digits-mlp' else 'scikit-learn'} on the test set: "
              f"max |diff| {err:.2e}")
        if err > 1e-4:
            raise SystemExit(f"{name}: the ONNX model does not match")
    write_config(out_mlp, "digits-mlp", "MLP on scikit-learn's 8x8 digits, paper section 5.3 in small", acc_mlp)
    write_config(out_lr, "digits-logreg", "Multinomial logistic regression on scikit-learn's 8x8 digits", acc_lr)

    png = draw(out_mlp / "jacobian_vs_logreg.png", [
        ("MLP mean Jacobian,\nall test images", j_all),
        ("MLP mean Jacobian,\nimages of the class", j_own),
        ("logistic regression\nweights", weights),
    ])
    split_info = {
        "data": "sklearn.datasets.load_digits, pixels 0..16 unscaled at the ONNX input",
        "split": "train_test_split(test_size=0.2, stratify=y, random_state=0), indices sorted",
        "n_train": len(ytr), "n_test": len(yte),
        "test_indices": idx_te.tolist(),
    }
    reference_mlp = {
        "model": "digits-mlp",
        **{k: v for k, v in split_info.items() if k != "test_indices"},
        "test_accuracy": round(acc_mlp, 4),
        "test_accuracy_logreg": round(acc_lr, 4),
        "jacobian": "d logits[c] / d pixels (raw 0..16 pixels, the ONNX input), torch autograd, "
                    "averaged per class c; arrays [10, 64] in reference_arrays.npz",
        "J_all": "mean over all 360 test images (the paper's average)",
        "J_own": "mean over the test images of digit c only",
        "weights": "digits-logreg's coef [10, 64] (per unit of pixels / 16)",
        "pearson_J_all_vs_logreg_weights": corr_all,
        "pearson_J_own_vs_logreg_weights": corr_own,
        "mean_abs": {"J_all": float(np.abs(j_all).mean()), "J_own": float(np.abs(j_own).mean())},
        "png": "jacobian_vs_logreg.png" if png else None,
        "test_indices": idx_te.tolist(),
    }
    (out_mlp / "reference.json").write_text(json.dumps(reference_mlp, indent=1) + "\n")
    np.savez_compressed(out_mlp / "reference_arrays.npz", J_all=j_all.astype(np.float32),
                        J_own=j_own.astype(np.float32), logreg_weights=weights.astype(np.float32))
    reference_lr = {
        "model": "digits-logreg",
        **{k: v for k, v in split_info.items() if k != "test_indices"},
        "test_accuracy": round(acc_lr, 4),
        "jacobian": "constant: coef / 16 with respect to the raw pixels (checked by autograd); "
                    "coef is logreg_weights in ../digits-mlp/reference_arrays.npz",
        "test_indices": idx_te.tolist(),
    }
    (out_lr / "reference.json").write_text(json.dumps(reference_lr, indent=1) + "\n")

    cache = HERE / ".cache" / "digits"
    cache.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(cache / "test.npz", pixels=xte, labels=yte, indices=idx_te)
    with open(cache / "test.csv", "w") as fh:
        fh.write(",".join([f"p{i}" for i in range(64)] + ["label"]) + "\n")
        for row, label in zip(xte, yte, strict=True):
            fh.write(",".join(str(int(v)) for v in row) + f",{label}\n")
    print(f"wrote {out_mlp} and {out_lr}; test split in {cache}")


if __name__ == "__main__":
    main()
