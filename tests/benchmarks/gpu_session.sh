#!/usr/bin/env bash
# Everything a session with an NVIDIA GPU should run, in one go (CI has no GPU, so none of this runs there).
#
#   bash tests/benchmarks/gpu_session.sh [STEP...]     # steps: smi nvml kernels-tests bench-kernels throttle
#                                                      #        bench-deviceplugin bench-extender (default: all)
#
# Works from a checkout with the package installed, or on a bare machine: if `tensorai` is not importable it
# is made importable from the checkout's folders (the same mapping as pyproject's package-dir), and wheels in
# .whl/ (if any) are installed into /tmp/site first. The log goes to stdout and, when $OUT is set, $OUT/gpu-session.log.
set -uo pipefail
cd "$(dirname "$0")/../.."
REPO=$PWD
LOG=${OUT:+$OUT/gpu-session.log}
LOG=${LOG:-/dev/null}
export PYTHONUNBUFFERED=1 NUMBA_ENABLE_CUDASIM=0
PY=${PYTHON:-python3}

if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
if ! "$PY" -c 'import tensorai.proto' 2>/dev/null; then
    mkdir -p /tmp/pkg/tensorai
    for part in proto deviceplugin scheduler kernels demo; do ln -sfn "$REPO/$part" "/tmp/pkg/tensorai/$part"; done
    export PYTHONPATH=/tmp/pkg${PYTHONPATH:+:$PYTHONPATH}
fi

steps=("$@")
[ ${#steps[@]} -eq 0 ] && steps=(smi nvml kernels-tests bench-kernels throttle bench-deviceplugin bench-extender)
status=0
step() {  # step NAME SECONDS COMMAND...
    local name=$1 limit=$2; shift 2
    printf '\n===== %s (limit %s s) =====\n' "$name" "$limit" | tee -a "$LOG"
    local started=$SECONDS
    timeout --signal=TERM --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$LOG"
    local rc=${PIPESTATUS[0]}
    printf '===== %s: rc %s in %s s =====\n' "$name" "$rc" "$((SECONDS - started))" | tee -a "$LOG"
    [ "$rc" -eq 0 ] || status=1
}
for name in "${steps[@]}"; do
    case $name in
        smi) step smi 30 bash -c 'nvidia-smi; nproc; '"$PY"' -c "import numba, numba_cuda, pynvml, grpc, google.protobuf as p; print(numba.__version__, numba_cuda.__version__, grpc.__version__, p.__version__)"' ;;
        nvml) step nvml 180 "$PY" tests/benchmarks/gpu_node_check.py ;;
        kernels-tests) step kernels-tests 240 "$PY" -m pytest -q -p no:cacheprovider tests/test_deviceplugin_nvml.py \
            tests/test_kernels_*.py tests/test_worker*.py ;;
        bench-kernels) step bench-kernels 240 "$PY" tests/benchmarks/bench_kernels.py ;;
        throttle) step throttle 150 "$PY" tests/benchmarks/throttle_accuracy.py --compare-unthrottled --duration-s 20 ;;
        bench-deviceplugin) step bench-deviceplugin 200 "$PY" tests/benchmarks/bench_deviceplugin.py --rounds 3 ;;
        bench-extender) step bench-extender 300 "$PY" tests/benchmarks/bench_extender.py --nodes 1000 5000 --measure 300 ;;
        *) echo "unknown step $name" >&2; status=2 ;;
    esac
done
exit $status
