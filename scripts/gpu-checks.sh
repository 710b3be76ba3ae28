#!/usr/bin/env bash
# The GPU checks of README "GPU status", packed to run on a machine that has a
# GPU but no Rust toolchain or internet (build here, run there).
#
#   scripts/gpu-checks.sh build         # here: test binaries with --features cuda and
#                                       # the sdrpn command line, stripped and
#                                       # xz-compressed into target/gpu-checks/
#   scripts/gpu-checks.sh run [STEP..]  # there, from a copy of the repo root that has
#                                       # target/gpu-checks/: runs each check (or only
#                                       # the STEPs named), prints a summary and a table
#
# The checks, in order: the core's tensor parts vs the CPU on WGPU and CUDA
# (sdrpn-core/tests/backends.rs), LLaVA vs HF transformers on WGPU in f32/f16
# and on CUDA in f32/f16/bf16 (sdrpn-llava/tests/{wgpu,wgpu_f16,cuda,cuda_f16,cuda_bf16}.rs),
# Qwen2.5-VL vs HF on the CPU and WGPU in f32 (sdrpn-qwen/tests/qwen/); then
# `sdrpn bench model` on a 7B-shaped LLaVA-1.5 (experiments/bench/llava-7b.json,
# random weights) on CUDA in f16 and bf16 and on WGPU in f16 (steps bench7b-cuda-f16,
# bench7b-cuda-bf16, bench7b-wgpu-f16), and `sdrpn bench batch --batch 1,8,32` on
# CUDA and WGPU (steps batch-cuda, batch-wgpu).
# A missing device fails rather than skips (SDRPN_REQUIRE_WGPU=1, SDRPN_REQUIRE_CUDA=1).
# Each step runs under `timeout` (STEP_TIMEOUT seconds, default 300); where $OUT
# is set (the device machine's result folder) each step's log is also written there.
# The command line is built in the dev profile (dependencies at opt-level 2), which
# shares the test binaries' compiled dependencies; GPU_CHECKS_PROFILE=release builds
# it fully optimised instead (a second long build on 2 cores). The pack is about
# 71 MB (seven test binaries of ~8 MB and the command line, 14 MB, each xz): more
# than one 64 MiB transfer, so copy it in two parts where transfers are limited
# (files already on the GPU machine stay; `run STEP...` runs what is there).
set -euo pipefail
cd "$(dirname "$0")/.."
PACK=target/gpu-checks
CHECKS=(backends wgpu wgpu_f16 cuda cuda_f16 cuda_bf16 qwen)

build() {
  rm -rf "$PACK" && mkdir -p "$PACK"
  local args=()
  for t in "${CHECKS[@]}"; do args+=(--test "$t"); done
  # --workspace in both builds: one feature set, so the command line below
  # reuses every compiled dependency of the tests (only its own link is new).
  cargo test --workspace --features cuda --no-run --message-format=json "${args[@]}" \
    | python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["test"]:
        print(m["target"]["name"], m["executable"])
' > "$PACK/executables.txt"
  while read -r name exe; do
    strip -o "$PACK/$name" "$exe"
    xz -9 -T0 "$PACK/$name"
  done < "$PACK/executables.txt"
  # The command line, for the benchmarks.
  local profile=${GPU_CHECKS_PROFILE:-dev} dir=debug
  [ "$profile" = release ] && dir=release
  cargo build --profile "$profile" --workspace --features cuda --bin sdrpn
  strip -o "$PACK/sdrpn" "target/$dir/sdrpn"
  xz -9 -T0 "$PACK/sdrpn"
  # The tests find their fixtures through the repo path they were compiled in.
  pwd > "$PACK/compiled-in-root.txt"
  du -ch "$PACK"/*.xz | tail -1
  echo "carry target/gpu-checks; on the GPU machine run: scripts/gpu-checks.sh run"
}

BENCH_STEPS=(bench7b-cuda-f16 bench7b-cuda-bf16 bench7b-wgpu-f16 batch-cuda batch-wgpu)

# The command of benchmark step $1, after "sdrpn".
bench_command() {
  case "$1" in
    bench7b-*)
      local rest=${1#bench7b-}
      echo "bench model --config experiments/bench/llava-7b.json --iters 3 --device ${rest%-*} --dtype ${rest#*-}" ;;
    batch-*) echo "bench batch --batch 1,8,32 --iters 2 --device ${1#batch-}" ;;
  esac
}

run() {
  [ -f "$PACK/compiled-in-root.txt" ] || { echo "no $PACK: run 'scripts/gpu-checks.sh build' first" >&2; exit 2; }
  local root
  root=$(cat "$PACK/compiled-in-root.txt")
  if [ "$root" != "$PWD" ] && [ ! -e "$root" ]; then
    mkdir -p "$(dirname "$root")" && ln -s "$PWD" "$root"
  fi
  local steps=("$@")
  [ ${#steps[@]} -eq 0 ] && steps=("${CHECKS[@]}" "${BENCH_STEPS[@]}")
  nvidia-smi -L 2>/dev/null || echo "(nvidia-smi not available)"
  export SDRPN_REQUIRE_WGPU=1 SDRPN_REQUIRE_CUDA=1 XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp}"
  local bin logs status failed=0 summary=() step
  bin=$(mktemp -d)
  logs=${OUT:-$(mktemp -d)}
  for step in "${steps[@]}"; do
    echo "=== $step"
    local cmd
    if [[ " ${CHECKS[*]} " == *" $step "* ]]; then
      xz -dc "$PACK/$step.xz" > "$bin/$step" && chmod +x "$bin/$step"
      cmd=("$bin/$step" --nocapture --test-threads=1)
    else
      [ -x "$bin/sdrpn" ] || { xz -dc "$PACK/sdrpn.xz" > "$bin/sdrpn" && chmod +x "$bin/sdrpn"; }
      local sub
      sub=$(bench_command "$step")
      [ -n "$sub" ] || { echo "unknown step $step (steps: ${CHECKS[*]} ${BENCH_STEPS[*]})" >&2; exit 2; }
      read -ra words <<< "$sub"
      cmd=("$bin/sdrpn" "${words[@]}")
    fi
    if timeout "${STEP_TIMEOUT:-300}" "${cmd[@]}" 2>&1 | tee "$logs/$step.log"; [ "${PIPESTATUS[0]}" -eq 0 ]; then
      status=pass
    else
      status=FAIL failed=1
    fi
    summary+=("$step: $status")
  done
  echo "=== summary"
  printf '%s\n' "${summary[@]}"
  if grep -qh '^table:' "$logs"/*.log 2>/dev/null; then
    echo
    echo "| model | device | dtype | params | vision ms | prefill tok/s | decode tok/s | two-pass vs baseline | peak MiB |"
    echo "|---|---|---|---|---|---|---|---|---|"
    grep -h '^table:' "$logs"/*.log | sed 's/^table: //'
  fi
  return "$failed"
}

case "${1:-}" in
  build) build ;;
  run) shift; run "$@" ;;
  *) echo "usage: $0 build | run [STEP...]" >&2; exit 2 ;;
esac
