#!/usr/bin/env bash
# A GPU session's checks for the lent GPU machine (or any CUDA host), in stages that each
# fit one command of the device tool (10 minutes). Logs go to $OUT (default ./out).
#
#   STAGES="tests"           bash scripts/gpu_check.sh   # the GPU tier, pytest -m gpu
#   STAGES="bench compile"   bash scripts/gpu_check.sh   # the issue benches, compile time
#   STAGES="cost"            bash scripts/gpu_check.sh   # scripts/measure_cost.sh (ncu)
#
# Measured on an H100 (2026-11-22): tests ~7 min with 6 workers, bench ~4 min, compile
# ~40 s, cost ~4 min. A transformers wheel under .whl/ (carried to the device; the one
# there may be older) is installed first when present.
set -uo pipefail
out=${OUT:-out}
mkdir -p "$out"
python3 -m pip install -q --no-deps --no-build-isolation --no-index -e . >/dev/null || exit 1
for wheel in .whl/transformers-*.whl; do
  [ -e "$wheel" ] && python3 -m pip install -q --no-deps "$wheel" >/dev/null
done
python3 - <<'PY' | tee "$out/versions.txt"
import torch, transformers, triton
print(f"torch {torch.__version__}, triton {triton.__version__}, transformers "
      f"{transformers.__version__}, {torch.cuda.get_device_name()} "
      f"(sm_{''.join(map(str, torch.cuda.get_device_capability()))})")
PY
export PYTHONUNBUFFERED=1

for stage in ${STAGES:-tests}; do
  case "$stage" in
    tests)
      # Tests compile kernels on the CPU cores, so workers shorten the run; none times
      # anything. GPU_TESTS: which files (default: every marked test).
      workers=""
      python3 -c "import xdist" 2>/dev/null && workers="-n ${WORKERS:-6}"
      timeout "${TEST_TIMEOUT:-540}" python3 -m pytest -q -rfE --tb=short -m gpu \
        ${GPU_TESTS:-tests} $workers --timeout 300 -W ignore -p no:cacheprovider \
        -p no:logging 2>&1 | grep -v '^DEBUG' | tee "$out/gpu_tests.log"
      ;;
    bench)
      # Issue 3's masked variants beside FlexAttention and SDPA, then issue 4's scan (the
      # compiled associative_scan baseline gets SCAN_COMPILE_S seconds).
      for mask in sliding_window alibi document; do
        timeout "${BENCH_TIMEOUT:-170}" ioaware bench attention --mask "$mask" --batch 2 \
          --heads 16 --seqlen 8192 --skip-slow --vs flex,sdpa 2>&1 | tee "$out/bench_$mask.log"
      done
      timeout "${BENCH_TIMEOUT:-170}" python3 - <<PY 2>&1 | tee "$out/bench_scan.log"
from ioaware.bench.scan import bench_scan, render_scan_bench
rows = bench_scan(compile_timeout_s=${SCAN_COMPILE_S:-30}, skip_slow=True)
print(render_scan_bench(rows, "selective scan B=4 D=1536 L=2048 N=16 bf16, silu(z) gate"))
PY
      ;;
    compile)
      # Issue 4: a 24-layer Mamba at L=2048 through ioaware.compile, associative_scan path.
      timeout "${COMPILE_TIMEOUT:-200}" python3 scripts/compile_time_scan.py --layers 24 \
        --length 2048 --path assoc --force-assoc-branch --budget 180 2>&1 \
        | tee "$out/compile_time.log"
      ;;
    cost)
      CALIBRATE_TIMEOUT=${CALIBRATE_TIMEOUT:-150} CASES_TIMEOUT=${CASES_TIMEOUT:-200} \
        GPU_TEST_TIMEOUT=${GPU_TEST_TIMEOUT:-110} REPORT_TIMEOUT=${REPORT_TIMEOUT:-90} \
        OUT="$out" bash scripts/measure_cost.sh
      ;;
    *)
      echo "gpu_check: unknown stage '$stage' (tests, bench, compile, cost)" >&2
      exit 2
      ;;
  esac
done
