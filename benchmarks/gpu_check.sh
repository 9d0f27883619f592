#!/usr/bin/env bash
# One-GPU check of advarena, in under 8 minutes on one CUDA GPU; prints one table.
#
#   benchmarks/gpu_check.sh                      # on CUDA, reduced paper suite on Fashion-MNIST
#   benchmarks/gpu_check.sh --dataset mnist --data-dir ~/mnist
#   benchmarks/gpu_check.sh --device cpu --smoke # the same checks, shrunk, on the CPU (CI)
#
# Checks, each timed:
#   cuda-tests       pytest -m cuda tests (the tests that need a CUDA device; they skip without)
#   pgd-bench        benchmarks/bench_pgd.py: PGD against its forward+backward limit (ratio)
#   train-amp-bf16   the quick suite's training and white-box protocol with --amp bf16 (clean
#                    accuracy and the device the records name)
#   train-chlast     the same with --channels-last
#   paper-suite      paper-004-t1-reduced (004 Tables 1-2) with --device DEVICE, then
#                    `advarena papers` on its store
#   paper-suite-ray  the same suite with --executor ray (one GPU a train/eval cell where the
#                    local Ray instance has GPUs); skipped if ray is not installed
# Options: --device cuda|cpu (default cuda), --smoke (smaller everything: smoke-test suite sizes,
# one PGD case), --dataset fashion-mnist|mnist, --data-dir DIR (default $ADVARENA_FASHION_MNIST
# or /usr/share/datasets/fashion-mnist), --keep DIR (keep stores and logs there).
# Exit status: 0 if every check passed or was skipped, 1 otherwise, 2 on bad options.
set -uo pipefail
cd "$(dirname "$0")/.."

DEVICE=cuda SMOKE=0 DATASET=fashion-mnist DATA_DIR="" KEEP=""
while [ $# -gt 0 ]; do
  case "$1" in
    --device) DEVICE="${2:-}"; shift 2 ;;
    --smoke) SMOKE=1; shift ;;
    --dataset) DATASET="${2:-}"; shift 2 ;;
    --data-dir) DATA_DIR="${2:-}"; shift 2 ;;
    --keep) KEEP="${2:-}"; shift 2 ;;
    -h|--help) sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "gpu_check: unknown option '$1'; see --help" >&2; exit 2 ;;
  esac
done
case "$DEVICE" in cuda|cpu) ;; *) echo "gpu_check: --device must be cuda or cpu" >&2; exit 2 ;; esac
case "$DATASET" in mnist|fashion-mnist) ;; *)
  echo "gpu_check: --dataset must be mnist or fashion-mnist" >&2; exit 2 ;; esac
[ -n "$DATA_DIR" ] || DATA_DIR="${ADVARENA_FASHION_MNIST:-/usr/share/datasets/fashion-mnist}"

PY="${PYTHON:-python}"
if [ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ]; then PY=.venv/bin/python; fi
export PYTHONPATH="$PWD:$PWD/plugins${PYTHONPATH:+:$PYTHONPATH}"
WORK="${KEEP:-$(mktemp -d)}"
mkdir -p "$WORK"
[ -n "$KEEP" ] || trap 'rm -rf "$WORK"' EXIT
ADV=("$PY" -m advarena.cli.main)

if [ "$DEVICE" = cuda ] && ! "$PY" -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
  echo "gpu_check: --device cuda but torch sees no CUDA device; use --device cpu" >&2
  exit 2
fi
# On the CPU, hide any GPU from the benchmark and Ray too, so the CPU is what gets measured.
[ "$DEVICE" = cpu ] && export CUDA_VISIBLE_DEVICES=""

ROWS=()
FAILED=0
row() { ROWS+=("$1|$2|$3|$4"); [ "$2" = fail ] && FAILED=1; return 0; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
tail1() { tail -n "${2:-1}" "$1" | tr '\n|' '  ' | cut -c1-150; }

# 1. CUDA-marked tests (only the files that have any: collecting every test costs time)
t=$(now)
mapfile -t cuda_files < <(grep -l "pytest.mark.cuda" tests/test_*.py)
"$PY" -m pytest -m cuda "${cuda_files[@]}" -q -p no:cacheprovider >"$WORK/cuda-tests.log" 2>&1
rc=$?
# pytest: 5 = nothing collected (no test selected), which is not a failure
if [ $rc -eq 0 ] || [ $rc -eq 5 ]; then st=pass; else st=fail; fi
row cuda-tests $st "$(since "$t")" "$(tail1 "$WORK/cuda-tests.log")"

# 2. PGD benchmark: ratio of PGD to its forward+backward limit (target within 1.15)
t=$(now)
# the folder, not the file: benchmarks/conftest.py collects bench_*.py, and a file named on the
# command line would be collected a second time
sel="test_pgd_against_limit"; [ $SMOKE = 1 ] && sel="$sel and digits"
"$PY" -m pytest benchmarks --benchmark-only -q -p no:cacheprovider -k "$sel" \
  --benchmark-json "$WORK/pgd.json" >"$WORK/pgd.log" 2>&1
if [ $? -eq 0 ] && [ -f "$WORK/pgd.json" ]; then
  detail=$("$PY" - "$WORK/pgd.json" <<'EOF'
import json, sys
data = json.load(open(sys.argv[1]))
parts = []
for b in data["benchmarks"]:
    e = b["extra_info"]
    parts.append(f"{b['param']}: pgd/limit {e['ratio_to_limit']:.2f}, "
                 f"pgd/torchattacks {e['ratio_to_torchattacks']:.2f} ({e['device']})")
print("; ".join(parts))
EOF
)
  row pgd-bench pass "$(since "$t")" "$detail"
else
  row pgd-bench fail "$(since "$t")" "$(tail1 "$WORK/pgd.log")"
fi

# 3-4. Mixed precision and channels_last training (the quick suite: digits, embedded; with
# --smoke 3 epochs, 100 examples, two attacks)
QUICK=quick
if [ $SMOKE = 1 ]; then
  QUICK="$WORK/quick-smoke.toml"
  "$PY" -c "
import sys
from advarena.papers.derive import derived_suite, to_toml
open(sys.argv[1], 'w').write(to_toml(derived_suite('quick', overrides={
    'train': {'epochs': 3}, 'eval': {'n_examples': 100, 'batch_size': 100},
    'protocols': {'white-box': {'attacks': ['fgsm', 'pgd']}}})))" "$QUICK"
fi
for variant in amp-bf16 chlast; do
  flags=(--amp bf16); [ $variant = chlast ] && flags=(--channels-last)
  t=$(now)
  "${ADV[@]}" run --suite "$QUICK" --defense none --protocol white-box --device "$DEVICE" \
    "${flags[@]}" --store "$WORK/store-$variant" --quiet --output "$WORK/$variant.json" \
    >"$WORK/$variant.log" 2>&1
  if [ $? -eq 0 ]; then
    detail=$("$PY" -c "
import json, sys
r = json.load(open(sys.argv[1]))
acc = [x for x in r if x['metric'] == 'accuracy' and x['protocol'] == 'white-box']
print(f\"clean accuracy {acc[0]['value']:.3f}, device {acc[0]['device']}\")" "$WORK/$variant.json")
    row "train-$variant" pass "$(since "$t")" "$detail"
  else
    row "train-$variant" fail "$(since "$t")" "$(tail1 "$WORK/$variant.log")"
  fi
done

# 5-6. The reduced paper suite (004 Tables 1-2), on DEVICE and through Ray
SUITE="$WORK/paper-suite.toml"
"$PY" - "$SUITE" "$DATASET" "$SMOKE" <<'EOF'
import sys
from pathlib import Path
from advarena.papers.derive import derived_suite, smoke_suite, to_toml
path, dataset, smoke = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
if smoke:
    text = smoke_suite(dataset)
else:
    text = to_toml(derived_suite("paper-004-t1-reduced", dataset=dataset))
Path(path).write_text(text)
EOF
have_data=1
"$PY" -c "
import sys, advarena
advarena.dataset(sys.argv[1], limit_train=1, limit_test=1).load(sys.argv[2])" \
  "$DATASET" "$DATA_DIR" >"$WORK/data.log" 2>&1 || have_data=0

paper_suite() {  # name, extra run options...
  local name="$1"; shift
  local t; t=$(now)
  if [ $have_data = 0 ]; then
    row "$name" skip 0 "no $DATASET data: $(tail1 "$WORK/data.log")"
    return
  fi
  "${ADV[@]}" run --suite "$SUITE" --device "$DEVICE" --data-dir "$DATA_DIR" \
    --store "$WORK/store-$name" --quiet --output "$WORK/$name.json" "$@" \
    >"$WORK/$name.log" 2>&1
  local rc=$?
  if [ $rc -ne 0 ]; then
    row "$name" fail "$(since "$t")" "exit $rc: $(tail1 "$WORK/$name.log" 2)"
    return
  fi
  "${ADV[@]}" papers --store "$WORK/store-$name" >"$WORK/$name-papers.md" 2>&1 || {
    row "$name" fail "$(since "$t")" "advarena papers: $(tail1 "$WORK/$name-papers.md")"
    return; }
  local detail
  detail=$("$PY" -c "
import json, sys
r = json.load(open(sys.argv[1]))
print(f\"{len(r)} records, {len({x['cell_key'] for x in r})} cells, device \"
      f\"{','.join(sorted({x['device'] for x in r}))}, protocols \"
      f\"{len({x['protocol'] for x in r})}\")" "$WORK/$name.json")
  row "$name" pass "$(since "$t")" "$detail"
}

paper_suite paper-suite
if "$PY" -c "import ray" >/dev/null 2>&1; then
  if [ $SMOKE = 1 ]; then
    paper_suite paper-suite-ray --executor ray --protocol white-box
  else
    paper_suite paper-suite-ray --executor ray
  fi
else
  row paper-suite-ray skip 0 "ray is not installed (pip install 'advarena[ray]')"
fi

# The table
dev_name=$("$PY" -c "
import torch
print(torch.cuda.get_device_name(0) if '$DEVICE' == 'cuda' else 'CPU', '| torch', torch.__version__)")
echo "advarena gpu_check: device $DEVICE ($dev_name), $(date -u +%Y-%m-%d), smoke=$SMOKE, data $DATASET"
echo
echo "| check | status | seconds | detail |"
echo "|---|---|---:|---|"
for r in "${ROWS[@]}"; do
  IFS='|' read -r name st secs detail <<<"$r"
  echo "| $name | $st | $secs | $detail |"
done
[ -n "$KEEP" ] && echo && echo "logs and stores kept in $WORK"
exit $FAILED
