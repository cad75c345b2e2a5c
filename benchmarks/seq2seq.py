"""A 5-token generation explained: blackbox-sal (onnxruntime, chained gradient graphs) against
the same done with Captum on the PyTorch model.

Both sides do the same work on the same model (a random T5 and BART of models/build_seq2seq.py,
default 256 wide, 4 + 4 layers), the same source (~12 tokens) and the same 5 output tokens:

- greedy generation of 5 tokens (blackbox-sal feeds one new token per step through
  decoder_with_past_model.onnx; the PyTorch sides rerun the decoder on the prefix: a few ms);
- per output step t: integrated gradients of log p_t over the source embeddings (Gauss-Legendre,
  --steps nodes, the pad token's embedding as baseline, the output prefix fixed), and
  gradient x input over the decoder's input embeddings.

Captum's approach is what its ``LLMAttribution`` does for a generation: one
``IntegratedGradients.attribute`` per output token (``internal_batch_size`` = steps, all nodes
in one batch), plus one ``InputXGradient`` per token for the prefix; SDPA attention, weights
frozen (``requires_grad_(False)``), ``torch.set_num_threads`` = --threads. blackbox-sal runs
all 5 steps' rows in shared runs (``explain_generation``, method ig). A third side, "torch
packed", does blackbox-sal's packing in PyTorch (every IG row of every step in one forward and
backward): the floor for PyTorch on this model, separating the packing's gain from the
runtime's. Printed: ``uptime``
first, then per side the median wall time over --repeats interleaved runs with its range, the
CPU time (process) beside it, and the largest completeness gap.

    python models/build_seq2seq.py --width 256 --layers 4 --out benchmarks/.cache
    python benchmarks/seq2seq.py [--kind t5|bart] [--steps 32] [--repeats 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from blackbox_sal.model.encoder_decoder import load_pair
from blackbox_sal.seq2seq.explaining import explain_generation

HERE = Path(__file__).resolve().parent
SOURCE = "the big red bird sings loud on the green tree today and the cat is happy"


def captum_side(model: Any, pair: Any, steps: int) -> Callable[[], tuple[list[int], float]]:
    import torch
    from captum.attr import InputXGradient, IntegratedGradients

    src = torch.tensor([pair.tokenizer.encode(SOURCE).ids])
    table = model.get_input_embeddings()
    pad = pair.pad_id if pair.pad_id is not None else 0

    def run() -> tuple[list[int], float]:
        with torch.no_grad():  # greedy, decoder rerun on the growing prefix (as ours)
            enc = model.get_encoder()(input_ids=src)
            prefix = torch.tensor([[pair.start_id]])
            for _ in range(5):
                nxt = model(encoder_outputs=enc, decoder_input_ids=prefix, use_cache=False).logits[0, -1].argmax()
                prefix = torch.cat([prefix, nxt.view(1, 1)], 1)
                if int(nxt) == pair.eos_id:
                    break
        out = prefix[0, 1:]
        dec_in = prefix[:, :-1]
        x = table(src).detach()
        base = table(torch.full_like(src, pad)).detach()
        xp = table(dec_in).detach()
        worst = 0.0
        for t in range(len(out)):
            def score(s: torch.Tensor, p: torch.Tensor | None = None, t: int = t) -> torch.Tensor:
                p = xp.expand(len(s), -1, -1) if p is None else p
                logits = model(inputs_embeds=s, decoder_inputs_embeds=p, use_cache=False).logits
                return torch.log_softmax(logits[:, t], -1)[:, int(out[t])]

            ig = IntegratedGradients(score)
            _, delta = ig.attribute(x, base, n_steps=steps, method="gausslegendre", internal_batch_size=steps,
                                       return_convergence_delta=True)
            InputXGradient(lambda s, p: score(s, p)).attribute((x, xp))
            worst = max(worst, float(delta.abs().max()))
        return out.tolist(), worst

    return run


def packed_side(model: Any, pair: Any, steps: int) -> Callable[[], tuple[list[int], float]]:
    """The same work in PyTorch, packed as blackbox-sal packs it: the IG rows of all output
    steps in one forward and backward, the prefix's rows in another (not Captum's API: the
    floor its per-token loop could reach on this model)."""
    import torch

    from blackbox_sal.methods.quadrature import gauss_legendre

    src = torch.tensor([pair.tokenizer.encode(SOURCE).ids])
    table = model.get_input_embeddings()
    pad = pair.pad_id if pair.pad_id is not None else 0
    alphas, weights = (torch.tensor(v, dtype=torch.float32) for v in gauss_legendre(steps))

    def run() -> tuple[list[int], float]:
        with torch.no_grad():
            enc = model.get_encoder()(input_ids=src)
            prefix = torch.tensor([[pair.start_id]])
            for _ in range(5):
                nxt = model(encoder_outputs=enc, decoder_input_ids=prefix, use_cache=False).logits[0, -1].argmax()
                prefix = torch.cat([prefix, nxt.view(1, 1)], 1)
                if int(nxt) == pair.eos_id:
                    break
        out, dec_in = prefix[0, 1:], prefix[:, :-1]
        n = len(out)
        x, base, xp = (table(v).detach() for v in (src, torch.full_like(src, pad), dec_in))
        points = (base + alphas.view(-1, 1, 1) * (x - base)).repeat_interleave(n, 0).requires_grad_(True)
        step = torch.arange(n).repeat(steps)
        logits = model(inputs_embeds=points, decoder_inputs_embeds=xp.expand(len(points), -1, -1),
                       use_cache=False).logits
        lp = torch.log_softmax(logits, -1)[torch.arange(len(points)), step, out[step]]
        (grad,) = torch.autograd.grad(lp.sum(), points)
        ig = ((grad.view(steps, n, *x.shape[1:]) * weights.view(-1, 1, 1, 1)).sum(0) * (x - base)).sum(-1)
        xs = x.expand(n, -1, -1).requires_grad_(True)
        pre = xp.expand(n, -1, -1).clone().requires_grad_(True)
        ends = torch.log_softmax(model(inputs_embeds=torch.cat([xs, base.expand(n, -1, -1)]),
                                       decoder_inputs_embeds=torch.cat([pre, pre]), use_cache=False).logits, -1)
        rows = torch.arange(n)
        at_x, at_base = ends[rows, rows, out], ends[n + rows, rows, out]
        torch.autograd.grad(at_x.sum(), pre)
        gap = float((at_x - at_base - ig.sum(-1)).abs().max())
        return out.tolist(), gap

    return run


def timed(fn: Callable[[], Any]) -> tuple[float, float, Any]:
    wall, cpu = time.perf_counter(), time.process_time()
    value = fn()
    return time.perf_counter() - wall, time.process_time() - cpu, value


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kind", choices=("t5", "bart"), default="bart")
    ap.add_argument("--folder", default=None, help="the pair (default benchmarks/.cache/seq2seq-KIND-256x4)")
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    print("uptime:", subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())

    import torch
    from transformers import AutoModelForSeq2SeqLM

    torch.set_num_threads(args.threads)
    folder = Path(args.folder or HERE / ".cache" / f"seq2seq-{args.kind}-256x4")
    if not (folder / "torch_model").is_dir():
        sys.exit(f"no pair at {folder}: build it first with\n"
                 f"  python models/build_seq2seq.py --width 256 --layers 4 --out {folder.parent}")
    pair = load_pair(folder, threads=args.threads)
    model = AutoModelForSeq2SeqLM.from_pretrained(str(folder / "torch_model"), attn_implementation="sdpa").eval()
    model.requires_grad_(False)

    def ours() -> tuple[list[int], float]:
        e = explain_generation(pair, SOURCE, generate_tokens=5, method="ig", steps=args.steps)
        assert e.deltas is not None
        return [pair.tokenizer.token_to_id(t) for t in e.output_tokens], float(np.abs(e.deltas).max())

    sides = {"blackbox-sal": ours, "captum": captum_side(model, pair, args.steps),
             "torch packed": packed_side(model, pair, args.steps)}
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in sides}
    outputs: dict[str, Any] = {}
    for warm_up in sides.values():
        warm_up()
    for _ in range(args.repeats):
        for name, fn in sides.items():
            wall, cpu, value = timed(fn)
            results[name].append((wall, cpu))
            outputs[name] = value
    src_len = len(pair.tokenizer.encode(SOURCE).ids)
    print(f"{folder.name}: source {src_len} tokens, {len(outputs['captum'][0])} output tokens, IG {args.steps} "
          f"Gauss-Legendre nodes, {args.threads} threads, {args.repeats} repeats")
    print(f"same greedy output on every side: {len({str(v[0]) for v in outputs.values()}) == 1}")
    print(f"{'side':<14} {'wall median':>12} {'wall range':>18} {'CPU median':>11} {'max |gap|':>10}")
    for name, runs in results.items():
        walls, cpus = [w for w, _ in runs], [c for _, c in runs]
        print(f"{name:<14} {statistics.median(walls):>10.3f} s {min(walls):>7.3f}-{max(walls):.3f} s "
              f"{statistics.median(cpus):>9.3f} s {outputs[name][1]:>10.2e}")
    ratio = (statistics.median(w for w, _ in results["captum"])
             / statistics.median(w for w, _ in results["blackbox-sal"]))
    print(f"captum / blackbox-sal wall time: {ratio:.2f}x")


if __name__ == "__main__":
    main()
