#!/usr/bin/env bash
# Time two checkouts of ioaware side by side on one GPU: `ioaware bench attention` (dense and
# causal, then each masked variant) and `ioaware bench scan`, each case run for the base
# checkout and then this one, in one process per case and checkout, so that both meet the
# same card, clocks and neighbours. SDPA is timed in every attention case as a control: its
# base/this ratio is the run-to-run noise of the machine.
#
#   BASE=path/to/other/checkout bash scripts/compare_checkouts.sh      # logs and JSON in $OUT
#
# Each checkout is installed (not editable) into its own folder and run with its own kernel
# cache, so neither reads the other's modules. CASES picks cases (default: all five).
set -uo pipefail
base=${BASE:?BASE must name the checkout to compare against}
out=$(mkdir -p "${OUT:-out}" && cd "${OUT:-out}" && pwd)
base=$(cd "$base" && pwd)
export PYTHONUNBUFFERED=1
for name in base this; do
  src=$([ "$name" = base ] && echo "$base" || echo .)
  rm -rf "/tmp/ioaware-$name"
  python3 -m pip install -q --no-deps --no-build-isolation --no-index --target "/tmp/ioaware-$name" \
    "$src" >/dev/null || { echo "compare: installing $src failed" >&2; exit 1; }
done
# One case in one process: the CLI's bench with --json, or the scan bench without its
# torch.compile baseline (minutes to compile, and not what is compared).
runner=$(cat <<'PY'
import dataclasses, json, sys
if sys.argv[1:] == ["scan"]:
    try:
        from ioaware.bench.scan import bench_scan
    except ImportError:
        from ioaware.bench_scan import bench_scan
    rows = bench_scan(skip_slow=True, compile_timeout_s=1)
    print(json.dumps([dataclasses.asdict(r) for r in rows]))
else:
    from ioaware.cli import main
    sys.exit(main([*sys.argv[1:], "--json"]))
PY
)
size="--batch ${B:-4} --heads ${H:-16} --seqlen ${N:-4096}"
masked="--batch 2 --heads 16 --seqlen 8192"
for case in ${CASES:-dense sliding_window alibi document scan}; do
  case "$case" in
    dense) args="bench attention $size --vs sdpa --skip-slow" ;;
    scan) args="scan" ;;
    *) args="bench attention --mask $case $masked --vs sdpa --skip-slow" ;;
  esac
  for name in base this; do
    echo "== $case, $name" >&2
    # from /tmp: run from the repository root, `-c` would import its ioaware/ instead
    (cd /tmp && PYTHONPATH="/tmp/ioaware-$name" IOAWARE_CACHE_DIR="/tmp/ioaware-cache-$name" \
      timeout "${CASE_TIMEOUT:-240}" python3 -c "$runner" $args >"$out/$case-$name.json" \
      2>"$out/$case-$name.log") || { echo "compare: $case ($name) failed" >&2
      tail -5 "$out/$case-$name.log" >&2; }
  done
done
python3 - "$out" <<'PY'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
print(f"{'case':<16}{'variant':<34}{'base fwd':>10}{'this fwd':>10}{'ratio':>7}"
      f"{'base f+b':>10}{'this f+b':>10}{'ratio':>7}")
for path in sorted(out.glob("*-base.json")):
    case = path.name[: -len("-base.json")]
    other = out / f"{case}-this.json"
    try:
        base, this = json.loads(path.read_text()), json.loads(other.read_text())
    except (OSError, ValueError):
        print(f"{case:<16}(no result)")
        continue
    def key(r):
        return (r.get("variant"), r.get("causal"))
    this_rows = {key(r): r for r in this}
    for r in base:
        t = this_rows.get(key(r))
        if t is None:
            continue
        name = f"{r.get('variant')}{' causal' if r.get('causal') else ''}"
        cells = []
        for field in ("fwd_ms", "fwd_bwd_ms"):
            a, b = r.get(field), t.get(field)
            ratio = f"{b / a:.3f}" if a and b else "-"
            cells += [f"{a:.3f}" if a else "-", f"{b:.3f}" if b else "-", ratio]
        print(f"{case:<16}{name:<34}{cells[0]:>10}{cells[1]:>10}{cells[2]:>7}"
              f"{cells[3]:>10}{cells[4]:>10}{cells[5]:>7}")
PY
