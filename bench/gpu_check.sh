#!/usr/bin/env bash
# Every GPU measurement and test in one call of under 9 minutes, for a GPU node that has only
# torch, numpy, h5py, scikit-learn and pytest (no Ray, Optuna, MLflow; nothing to install):
#
#   bash bench/gpu_check.sh OUT_DIR [PROBE]     # PROBE: an optional gpu_probe.py to run last
#
# Each part has its own time limit, so one that hangs cannot take the others' time; each writes
# its output under OUT_DIR (the tests' log, bench_gpu.txt, bench_fused.json/.txt, the probe's).
# Put the figures in bench/RESULTS.md with the date and the GPU's name (nvidia-smi.txt).
set -u
out=${1:?usage: bash bench/gpu_check.sh OUT_DIR [PROBE]}
probe=${2:-}
mkdir -p "$out"
py=python3
[ -x .venv/bin/python ] && py=.venv/bin/python

part() {  # part NAME SECONDS COMMAND...: run it with a limit, its output to OUT/NAME.txt
    local name=$1 limit=$2
    shift 2
    echo "=== $name (at most ${limit}s)"
    local start=$SECONDS
    timeout "$limit" "$@" >"$out/$name.txt" 2>&1
    echo "--- $name: exit $?, $((SECONDS - start)) s; last lines:"
    tail -n 5 "$out/$name.txt"
}

nvidia-smi >"$out/nvidia-smi.txt" 2>&1
part tests 150 "$py" -m pytest -q -m gpu tests/gpu -p no:cacheprovider -rs
part bench_fused 170 "$py" bench/bench_fused.py --budget 140 --out "$out/bench_fused.json"
part bench_gpu 120 "$py" bench/bench_gpu.py --quick
if [ -n "$probe" ]; then
    part probe 80 "$py" "$probe" --root . --out "$out" --quick --parts env,vmap
fi
