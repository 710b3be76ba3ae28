#!/usr/bin/env bash
# The GPU checks of README "GPU status", packed to run on a machine that has a
# GPU but no Rust toolchain or internet (build here, run there).
#
#   scripts/gpu-checks.sh build   # here: test binaries with --features cuda,
#                                 # stripped and xz-compressed into target/gpu-checks/
#   scripts/gpu-checks.sh run     # there, from a copy of the repo root that has
#                                 # target/gpu-checks/: runs each check, prints a summary
#
# The checks: the core's tensor parts vs the CPU on WGPU and CUDA
# (sdrpn-core/tests/backends.rs), LLaVA vs HF transformers on WGPU in f32/f16
# and on CUDA in f32/f16/bf16 (sdrpn-llava/tests/{wgpu,wgpu_f16,cuda,cuda_f16,cuda_bf16}.rs),
# Qwen2.5-VL vs HF on the CPU and WGPU in f32 (sdrpn-qwen/tests/qwen/), and
# `sdrpn bench batch --batch 1,8,32` on CUDA and WGPU (samples/s of padded batches).
# A missing device fails rather than skips (SDRPN_REQUIRE_WGPU=1, SDRPN_REQUIRE_CUDA=1).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=target/gpu-checks
CHECKS=(backends wgpu wgpu_f16 cuda cuda_f16 cuda_bf16 qwen)

build() {
  rm -rf "$OUT" && mkdir -p "$OUT"
  local args=()
  for t in "${CHECKS[@]}"; do args+=(--test "$t"); done
  cargo test -p sdrpn-core -p sdrpn-llava -p sdrpn-qwen --features cuda --no-run --message-format=json "${args[@]}" \
    | python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["test"]:
        print(m["target"]["name"], m["executable"])
' > "$OUT/executables.txt"
  while read -r name exe; do
    strip -o "$OUT/$name" "$exe"
    xz -9 -T0 "$OUT/$name"
  done < "$OUT/executables.txt"
  # The command line, for the batched-answering benchmark (issue 13).
  cargo build --release -p experiments --features cuda
  strip -o "$OUT/sdrpn" target/release/sdrpn
  xz -9 -T0 "$OUT/sdrpn"
  # The tests find their fixtures through the repo path they were compiled in.
  pwd > "$OUT/compiled-in-root.txt"
  du -ch "$OUT"/*.xz | tail -1
  echo "carry target/gpu-checks; on the GPU machine run: scripts/gpu-checks.sh run"
}

run() {
  [ -f "$OUT/compiled-in-root.txt" ] || { echo "no $OUT: run 'scripts/gpu-checks.sh build' first" >&2; exit 2; }
  local root
  root=$(cat "$OUT/compiled-in-root.txt")
  if [ "$root" != "$PWD" ] && [ ! -e "$root" ]; then
    mkdir -p "$(dirname "$root")" && ln -s "$PWD" "$root"
  fi
  nvidia-smi -L 2>/dev/null || echo "(nvidia-smi not available)"
  export SDRPN_REQUIRE_WGPU=1 SDRPN_REQUIRE_CUDA=1 XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp}"
  local bin status failed=0 summary=()
  bin=$(mktemp -d)
  for t in "${CHECKS[@]}"; do
    echo "=== $t"
    xz -dc "$OUT/$t.xz" > "$bin/$t" && chmod +x "$bin/$t"
    if "$bin/$t" --nocapture --test-threads=1; then status=pass; else status=FAIL failed=1; fi
    summary+=("$t: $status")
  done
  # Samples/s of padded batches on each GPU backend (B = 1, 8, 32).
  xz -dc "$OUT/sdrpn.xz" > "$bin/sdrpn" && chmod +x "$bin/sdrpn"
  for dev in cuda wgpu; do
    echo "=== bench batch on $dev"
    if "$bin/sdrpn" bench batch --batch 1,8,32 --iters 2 --device "$dev"; then status=pass; else status=FAIL failed=1; fi
    summary+=("bench batch $dev: $status")
  done
  echo "=== summary"
  printf '%s\n' "${summary[@]}"
  return "$failed"
}

case "${1:-}" in
  build) build ;;
  run) run ;;
  *) echo "usage: $0 build|run" >&2; exit 2 ;;
esac
