#!/usr/bin/env bash
# One GPU session's worth of checks, for the lent GPU machine (or any CUDA host):
# install, the GPU test tier, then the attention bench. Logs go to $OUT when set.
set -uo pipefail
out=${OUT:-out}
mkdir -p "$out"
python3 -m pip install -q --no-deps --no-build-isolation --no-index -e . >/dev/null || exit 1
python3 - <<'PY' | tee "$out/versions.txt"
import torch, triton
print(f"torch {torch.__version__}, triton {triton.__version__}, "
      f"{torch.cuda.get_device_name()} (sm_{''.join(map(str, torch.cuda.get_device_capability()))})")
PY
export PYTHONUNBUFFERED=1
# GPU_TESTS: which test files ("" for none); PYTEST_ARGS: e.g. "-n 4" (tests compile kernels
# on the CPU cores, so workers shorten the run; no test times anything).
[ -z "${GPU_TESTS-tests}" ] || timeout "${TEST_TIMEOUT:-320}" python3 -m pytest -q -m gpu ${GPU_TESTS-tests} ${PYTEST_ARGS:-} \
  -p no:cacheprovider --durations=8 2>&1 | tee "$out/gpu_tests.log"
# BENCHES: which benches after the tests ("attention scan" by default; "" for none).
for b in ${BENCHES-attention scan}; do
  timeout "${BENCH_TIMEOUT:-200}" ioaware bench "$b" ${BENCH_ARGS:-} 2>&1 | tee "$out/bench_$b.log"
done
