#!/usr/bin/env bash
# On the GPU machine, in the command that carries the LAST onnxruntime-gpu piece together with
# .gpu/kit and .gpu/unpack.sh (the earlier pieces already copied to /tmp/gpu-pieces by the
# commands before it, back to back; see benchmarks/gpu_prepare.sh). Unpacks onnxruntime-gpu,
# installs the project and captum without dependencies into /tmp/bs, then runs gpu.py and
# batch_throughput.py, each under `timeout`, so that the whole command ends within BUDGET
# seconds (default 330) even if something hangs. Results: $OUT/gpu/gpu.jsonl and
# $OUT/batch/batch.jsonl (written as they are measured) and each script's log beside them.
#
#   bash benchmarks/gpu_device.sh            # BUDGET=330 GPU_SHARE=215 by default
set -uo pipefail
start=$SECONDS
budget=${BUDGET:-330}
gpu_share=${GPU_SHARE:-215}
out=${OUT:-/tmp/bs-out}
work=${WORK:-/tmp/bs-work}
left() { echo $((budget - (SECONDS - start))); }
mkdir -p "$out/gpu" "$out/batch"

bash .gpu/unpack.sh 2>&1 | tee "$out/unpack.log" || { echo "gpu_device.sh: unpacking onnxruntime-gpu failed"; exit 3; }
python3 -m pip install -q --no-index --no-deps --target /tmp/bs .gpu/kit/*.whl 2>&1 | grep -v WARNING || true
export PYTHONPATH=/tmp/ort-gpu:/tmp/bs
export PYTHONUNBUFFERED=1
nvidia-smi -L
python3 -c "import onnxruntime as o, blackbox_sal as b, importlib.metadata as m; print('onnxruntime', o.__version__, o.get_available_providers(), o.__file__); print('blackbox_sal', b.__version__, b.__file__); print('captum', m.version('captum'))"
echo "setup took $((SECONDS - start)) s"

# gpu.py first: the GPU goals of issue 14 (agreement, IG vs Captum, fd, raw sessions, placement)
t=$(( $(left) - 20 < gpu_share ? $(left) - 20 : gpu_share ))
echo "== gpu.py (at most $t s)"
timeout -k 5 "$t" python3 benchmarks/gpu.py --out "$out/gpu" --work "$work" 2>&1 | grep --line-buffered -v "Warning\|padding_length\|opset9.index" | tee "$out/gpu/log.txt"
echo "gpu.py: exit ${PIPESTATUS[0]} after $((SECONDS - start)) s"

# then issue 15: the GPU part (MiniLM, 64 short and 16 long texts) reusing gpu.py's model and
# graph cache, then a reduced CPU part (the full CPU run is measured on the CPU machine)
t=$(( $(left) - 8 ))
if [ "$t" -gt 20 ]; then
  echo "== batch_throughput.py (at most $t s)"
  timeout -k 5 "$t" python3 benchmarks/batch_throughput.py --out "$out/batch" --work "$work" --allow-cpu --devices gpu,cpu \
    --cpu-models default,minilm --cpu-short 16 --cpu-long 4 2>&1 | grep --line-buffered -v "Warning\|padding_length\|opset9.index" \
    | tee "$out/batch/log.txt"
  echo "batch_throughput.py: exit ${PIPESTATUS[0]} after $((SECONDS - start)) s"
fi
ls -l "$out"/gpu "$out"/batch
echo "== summary"
python3 benchmarks/summarize.py "$out/gpu/gpu.jsonl" "$out/batch/batch.jsonl"
echo "gpu_device.sh done in $((SECONDS - start)) s"
