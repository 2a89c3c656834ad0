#!/usr/bin/env bash
# Every GPU measurement issue #18 still needs, in one device call (the device tool's 10-minute command limit;
# few, full calls cost the least; the steps' limits add up to 585 s). Run from the repository root on the GPU machine:
#
#   bash benchmarks/gpu_session.sh              # writes one .txt per step under $OUT (or ./gpu-session)
#   SMOKE=1 bash benchmarks/gpu_session.sh      # the same steps at tiny sizes, on whatever device there is
#
# The device machine has torch but not pydantic/kornia: wheels under .whl/ (carried, git-ignored) are
# installed into /tmp/site first when present. Each step has its own time limit and its output file says
# how it ended; one failing step does not stop the others. Steps, in the order the results matter:
#   1 gpu-tests     pytest -m gpu tests/model: fused FIR really compiled in an SR pass, shared-style SR on
#                   CUDA, attention kernel, field search
#   2 psi-default   bench_psi fp32 + bf16, batch 1 + 8, PyTorch's default flags (the harness's), --breakdown
#   3 psi-fused     bench_psi bf16 with animate.fused_field (the Triton triplane + decoder kernel)
#   4 psi-compiled  bench_psi bf16 with animate.compile (Ψ's per-frame modules compiled)
#   5 sr            bench_superresolution: shared style vs one style per image (default flags)
#   6 trace         bench_psi --trace bf16:8: top kernels of one call
#   7 fields        bench_fields, part field with the inductor search, then with the Triton top-2 kernel
#   8 synthesize    bench_synthesize batch 8 (GenHead, part field included), torch paths, then with both Triton
#                   kernels (top-2 search, fused part-triplane decoder)
#   9 train         bench_train Ψ, up to 30 iterations or 25 s after 5 warm-up (bf16, default flags)
set -u
OUT="${OUT:-$PWD/gpu-session}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        > "$OUT/0-install.txt" 2>&1
    export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi

if [ "${SMOKE:-0}" = 1 ]; then
    PROFILE=tiny; ITERS="--iters 1 --warmup 1"; BATCHES=1,2; TRAIN_ITERS="--iters 1 --warmup 1"; SR_BATCHES=2
    SR_ITERS="--iters 1 --warmup 0 --dtypes fp32 --modes eval"; DEVICE="${DEVICE:-cpu}"
    FIELDS="--batches 1 --iters 1 --warmup 0 --lookup-points 2000 --part-points 2000"  # real FLAME sizes: keep small
else
    PROFILE=paper; ITERS="--iters 10 --warmup 3"; BATCHES=1,8; TRAIN_ITERS="--iters 30 --warmup 5 --max-seconds 25"; SR_BATCHES=1,8
    SR_ITERS="--iters 10 --warmup 3"; DEVICE="${DEVICE:-cuda}"; FIELDS="--batches $BATCHES $ITERS"
fi

step() {  # step NAME SECONDS COMMAND...: run with a time limit, output and exit status into $OUT/NAME.txt
    local name=$1 limit=$2
    shift 2
    local start=$SECONDS
    timeout "$limit" "$@" > "$OUT/$name.txt" 2>&1
    local rc=$?
    echo "[$name] exit $rc after $((SECONDS - start)) s: $*" | tee -a "$OUT/$name.txt" "$OUT/summary.txt"
}

{ date -u; "$PY" -c "import torch; print(torch.__version__, torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no CUDA')"
  nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv 2>/dev/null; } > "$OUT/summary.txt" 2>&1

step gpu-tests 75 "$PY" -m pytest -q -m gpu tests/model -p no:cacheprovider
step psi-default 120 "$PY" benchmarks/bench_psi.py --device "$DEVICE" --profile "$PROFILE" --tf32 default --breakdown \
    --batches "$BATCHES" $ITERS --json "$OUT/psi-default.json"
step psi-fused 60 "$PY" benchmarks/bench_psi.py --device "$DEVICE" --profile "$PROFILE" --tf32 default --dtypes bf16 \
    --fused-field --breakdown --batches "$BATCHES" $ITERS
step psi-compiled 80 "$PY" benchmarks/bench_psi.py --device "$DEVICE" --profile "$PROFILE" --tf32 default --dtypes bf16 \
    --compile-modules --breakdown --batches "$BATCHES" $ITERS
step sr 30 "$PY" benchmarks/bench_superresolution.py --device "$DEVICE" --tf32 default --batches "$SR_BATCHES" $SR_ITERS
step trace 30 "$PY" benchmarks/bench_psi.py --device "$DEVICE" --profile "$PROFILE" --tf32 default --dtypes bf16 \
    --batches 1 --iters 1 --warmup 1 --trace "bf16:${BATCHES##*,}"
step fields 30 "$PY" benchmarks/bench_fields.py --device "$DEVICE" $FIELDS
step fields-triton 30 "$PY" benchmarks/bench_fields.py --device "$DEVICE" $FIELDS --vertex-search-kernel triton
step synthesize 40 "$PY" benchmarks/bench_synthesize.py --device "$DEVICE" --profile "$PROFILE" --batch "${BATCHES##*,}" $ITERS
step synthesize-kernels 40 "$PY" benchmarks/bench_synthesize.py --device "$DEVICE" --profile "$PROFILE" \
    --batch "${BATCHES##*,}" $ITERS --vertex-search-kernel triton --fused-field
step train 50 "$PY" benchmarks/bench_train.py --stage psi --device "$DEVICE" --profile "$PROFILE" --batch-per-gpu 4 \
    $TRAIN_ITERS
cat "$OUT/summary.txt"
