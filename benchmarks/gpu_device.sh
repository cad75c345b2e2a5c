#!/usr/bin/env bash
# On the GPU machine, in the command that carries the LAST onnxruntime-gpu piece together with
# .gpu/kit and .gpu/unpack.sh (the earlier pieces already copied to /tmp/gpu-pieces, and the
# trained MiniLM's wheel pieces to /tmp/minilm, by the commands before it, back to back; see
# benchmarks/gpu_prepare.sh). Unpacks onnxruntime-gpu, installs the project and captum without
# dependencies into /tmp/bs, then runs the parts of PLAN in order, each under `timeout`, so
# that the whole command ends within BUDGET seconds (default 330) even if something hangs:
#
#   trained  gpu.py on the trained MiniLM (minilm-trained: agreement with the CPU, IG-50 against
#            Captum at ~35 and ~230 tokens, and IG at equal accuracy at ~230), if its wheel
#            came along; at most TRAINED_SHARE seconds (default 150)
#   batch    batch_throughput.py on the GPU: the engine (two lanes), the engine with one lane,
#            onnxruntime alone on the same rows, the loop and Captum, at 33 and 233 tokens, at
#            the default tokens per run and at each of TOKENS_PER_RUN (default 65536); at most
#            BATCH_SHARE seconds (default 150)
#   gpu      gpu.py on the random-weight shapes (MiniLM, BERT-base): every section; at most
#            GPU_SHARE seconds (default 215)
#
# Results: $OUT/<part>/*.jsonl (written as they are measured) and each part's log beside them.
#
#   PLAN="trained batch gpu" BUDGET=400 bash benchmarks/gpu_device.sh
#
# GPU_ARGS and BATCH_ARGS are added to gpu.py's and batch_throughput.py's arguments (for a dry
# run on a CPU: GPU_ARGS="--allow-cpu --texts 2 --loops 1" BATCH_ARGS="--allow-cpu --quick").
set -uo pipefail
start=$SECONDS
budget=${BUDGET:-330}
plan=${PLAN:-trained batch gpu}
gpu_share=${GPU_SHARE:-215}
trained_share=${TRAINED_SHARE:-150}
batch_share=${BATCH_SHARE:-150}
out=${OUT:-/tmp/bs-out}
work=${WORK:-/tmp/bs-work}
left() { echo $((budget - (SECONDS - start))); }
within() { local t; t=$(left); t=$((t - 10)); [ "$1" -lt "$t" ] && t=$1; echo "$t"; }
quiet() { grep --line-buffered -v "Warning\|padding_length\|opset9.index\|LOAD REPORT\|UNEXPECTED\|^Key \|^---\|^Notes:\|can be ignored\|Loading weights"; }
mkdir -p "$out"

bash .gpu/unpack.sh 2>&1 | tee "$out/unpack.log" || { echo "gpu_device.sh: unpacking onnxruntime-gpu failed"; exit 3; }
python3 -m pip install -q --no-index --no-deps --target /tmp/bs .gpu/kit/*.whl 2>&1 | grep -v WARNING || true
export PYTHONPATH=/tmp/ort-gpu:/tmp/bs
export PYTHONUNBUFFERED=1
nvidia-smi -L
python3 -c "import onnxruntime as o, blackbox_sal as b, importlib.metadata as m; print('onnxruntime', o.__version__, o.get_available_providers(), o.__file__); print('blackbox_sal', b.__version__, b.__file__); print('captum', m.version('captum'))"
if ls /tmp/minilm/part* >/dev/null 2>&1 && [ -f .gpu/kit/minilm-wheel.sha256 ]; then
  cat $(ls /tmp/minilm/part* | sort -V) > /tmp/minilm.whl
  if echo "$(cat .gpu/kit/minilm-wheel.sha256)  /tmp/minilm.whl" | sha256sum -c --quiet; then
    export BS_MINILM_WHEEL=/tmp/minilm.whl BS_MINILM_HEAD=$PWD/.gpu/kit/minilm-head.npz
  else
    echo "the trained MiniLM's wheel did not arrive whole: its part is skipped"
  fi
fi
echo "setup took $((SECONDS - start)) s"

for part in $plan; do
  mkdir -p "$out/$part"
  case $part in
    trained)
      if [ -z "${BS_MINILM_WHEEL:-}" ]; then echo "== trained: skipped (no wheel pieces in /tmp/minilm)"; continue; fi
      t=$(within "$trained_share"); echo "== trained: gpu.py --shapes minilm-trained (at most $t s)"
      timeout -k 5 "$t" python3 benchmarks/gpu.py --out "$out/$part" --work "$work" --shapes minilm-trained \
        --sections agreement,ig ${GPU_ARGS:-} 2>&1 | quiet | tee "$out/$part/log.txt" ;;
    batch)
      t=$(within "$batch_share"); echo "== batch: batch_throughput.py on the GPU (at most $t s)"
      timeout -k 5 "$t" python3 benchmarks/batch_throughput.py --out "$out/$part" --work "$work" --devices gpu \
        --tokens-per-run ",${TOKENS_PER_RUN:-65536}" ${BATCH_ARGS:-} 2>&1 | quiet | tee "$out/$part/log.txt" ;;
    gpu)
      t=$(within "$gpu_share"); echo "== gpu: gpu.py (at most $t s)"
      timeout -k 5 "$t" python3 benchmarks/gpu.py --out "$out/$part" --work "$work" ${GPU_ARGS:-} 2>&1 | quiet | tee "$out/$part/log.txt" ;;
    *) echo "gpu_device.sh: unknown part $part"; continue ;;
  esac
  echo "$part: exit ${PIPESTATUS[0]} after $((SECONDS - start)) s"
  [ "$(left)" -gt 20 ] || { echo "the budget is spent"; break; }
done
echo "== summary"
python3 benchmarks/summarize.py "$out"/*/*.jsonl
echo "gpu_device.sh done in $((SECONDS - start)) s"
