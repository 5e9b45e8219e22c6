#!/usr/bin/env bash
# One device-tool call's worth of GPU steps, each under its own time limit, each writing
# its whole output to $OUT/<step>.txt (read the files: a call's output tail cuts tables).
#
#   STEPS="tests scanpoly host" bash scripts/gpu_runbook.sh
#
# Steps (seconds are the limits, not the expected times):
#   tests      pytest -m gpu on the launch-plan, scan, SSD and CUDA-graph tiers (240;
#              TEST_FILES names others, TESTS_LIMIT another limit)
#   scanpoly   scripts/gpu_scan_poly.py against the kernels in out/scanbase (180)
#   host       host time per op, plans off and on (90)
#   infer      whole model: Llama-4L inference forward at S=8192 (150)
#   llama      whole model: Llama-4L training step (200)
#   mistral    whole model: Mistral-4L training step (240: ioaware's first call, tuning included, took 64 s)
#   mamba      whole model: Mamba-4L training step (150)
#   decode     scripts/gpu_decode.py: split-KV and paged decode beside SDPA (150)
#   generate   ioaware bench decode --generate-only (240)
#   genhost    scripts/gpu_generate_host.py: per-token host time of generate(), each variant in its own process (300)
#   dense      ioaware bench attention at issue 15's dense shapes beside SDPA and Flex:
#              B4 H16 N4096 d128 and B4 H32 N4096 d64, causal and not (300)
#   dense2     issue 15's other shapes: B1 H16 N16384 d128, B4 H16 N4096 d256 (300)
#   masked     ioaware bench attention --mask all beside Flex and compile (400)
#   backward   scripts/gpu_attention_backward.py --candidates (200)
#   ssd        scripts/gpu_ssd.py --issue-shape --skip model (480: checks of both backwards
#              ~2 min each, then the tables)
#   gluon      scripts/gpu_gluon_forward.py, then its GPU tests (350; GLUON_TESTS=0 skips them)
#   poly       scripts/gpu_gluon_forward.py --poly: the forward's polynomial-exp2 shares at
#              d = 64, checked, beside the tuned Triton forward and cuDNN (180)
#   gluonbwd   scripts/gpu_gluon_backward.py: the Gluon dK/dV kernel and its fused-dQ form
#              checked, timed beside the tuned Triton dK/dV and cuDNN (240), then its GPU
#              tests (150; GLUON_TESTS=0 skips them)
#   fp8        scripts/gpu_attention_fp8.py: the FP8 forward checked, timed beside bf16 and
#              cuDNN (150), then tests/gpu/test_attention_fp8_gpu.py (150)
# A step past its limit leaves what it printed and the word TIMEOUT in its file.
set -uo pipefail
out=${OUT:-out}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
python3 - <<'PY' > "$out/versions.txt" 2>&1
import torch, triton
try:
    import transformers
    tf = transformers.__version__
except ImportError:
    tf = "absent"
print(f"torch {torch.__version__}, triton {triton.__version__}, transformers {tf}, "
      f"{torch.cuda.get_device_name()}")
PY

step() {  # step NAME LIMIT COMMAND...
  local name=$1 limit=$2
  shift 2
  local started=$SECONDS
  timeout "$limit" "$@" > "$out/$name.txt" 2>&1
  local rc=$?
  [ $rc -eq 124 ] && echo "TIMEOUT after ${limit} s" >> "$out/$name.txt"
  echo "$name: rc $rc, $((SECONDS - started)) s" | tee -a "$out/summary.txt"
}

workers=""
python3 -c "import xdist" 2>/dev/null && workers="-n 6"
for s in ${STEPS:-tests}; do
  case "$s" in
    tests) step tests ${TESTS_LIMIT:-240} python3 -m pytest -q -rfE --tb=short -m gpu $workers \
             -W ignore -p no:cacheprovider ${TEST_FILES:-tests/gpu/test_launch_plan_gpu.py \
             tests/gpu/test_scan_kernel_gpu.py tests/gpu/test_ssd_gpu.py \
             tests/gpu/test_cudagraphs_gpu.py} ;;
    scanpoly) step scanpoly 180 python3 scripts/gpu_scan_poly.py --base-dir out/scanbase ;;
    host) step host 90 python3 scripts/gpu_whole_models.py --parts host --calls 300 ;;
    infer) step infer 150 python3 scripts/gpu_whole_models.py --parts llama-infer \
             --budget 140 ;;
    llama) step llama 200 python3 scripts/gpu_whole_models.py --parts llama --budget 190 ;;
    mistral) step mistral 240 python3 scripts/gpu_whole_models.py --parts mistral \
               --budget 230 ;;
    mamba) step mamba 150 python3 scripts/gpu_whole_models.py --parts mamba --budget 140 ;;
    decode) step decode 150 python3 scripts/gpu_decode.py ;;
    generate) step generate 240 python3 -m ioaware.cli bench decode --generate-only \
                --generate-budget 220 ;;
    genhost) step genhost 300 python3 scripts/gpu_generate_host.py ;;
    dense) step dense 300 bash -c "python3 -m ioaware.cli bench attention --batch 4 \
             --heads 16 --seqlen 4096 --head-dim 128 --skip-slow --vs sdpa,flex &&
             python3 -m ioaware.cli bench attention --batch 4 --heads 32 --seqlen 4096 \
             --head-dim 64 --skip-slow --vs sdpa,flex" ;;
    dense2) step dense2 300 bash -c "python3 -m ioaware.cli bench attention --batch 1 \
              --heads 16 --seqlen 16384 --head-dim 128 --skip-slow --vs sdpa,flex &&
              python3 -m ioaware.cli bench attention --batch 4 --heads 16 --seqlen 4096 \
              --head-dim 256 --skip-slow --vs sdpa,flex" ;;
    masked) step masked 400 python3 -m ioaware.cli bench attention --mask all --batch 2 \
              --heads 16 --seqlen 8192 --skip-slow --vs flex,compile ;;
    backward) step backward 200 python3 scripts/gpu_attention_backward.py --candidates ;;
    gluon) step gluon 250 python3 scripts/gpu_gluon_forward.py --timeout 240
           [ "${GLUON_TESTS:-1}" = 0 ] ||
           step gluontests 100 python3 -m pytest -q -rfE --tb=short -m gpu -W ignore \
             -p no:cacheprovider tests/gpu/test_attention_gluon_gpu.py ;;
    poly) step poly 180 python3 scripts/gpu_gluon_forward.py --poly ;;
    gluonbwd) step gluonbwd 240 python3 scripts/gpu_gluon_backward.py
              [ "${GLUON_TESTS:-1}" = 0 ] ||
              step gluonbwdtests 150 python3 -m pytest -q -rfE --tb=short -m gpu -W ignore \
                -p no:cacheprovider tests/gpu/test_attention_gluon_backward_gpu.py ;;
    fp8) step fp8 150 python3 scripts/gpu_attention_fp8.py
         step fp8tests 150 python3 -m pytest -q -rfE --tb=short -m gpu -W ignore \
           -p no:cacheprovider tests/gpu/test_attention_fp8_gpu.py ;;
    ssd) step ssd 480 python3 scripts/gpu_ssd.py --issue-shape --skip model ;;
    *) echo "unknown step $s" | tee -a "$out/summary.txt" ;;
  esac
done
