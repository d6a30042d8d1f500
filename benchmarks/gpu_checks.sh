#!/usr/bin/env bash
# Every GPU figure and GPU-only test of the project, in one run on a CUDA machine, most important
# first, each step under its own time limit so one that hangs cannot take the others' time:
#   bash benchmarks/gpu_checks.sh [OUT_DIR]     (default: $OUT, else ./gpu-checks)
# Each step's output is written to OUT_DIR as it runs, and the step's seconds and exit status after
# it. About 10 minutes in all on an H200; steps that do not fit in a time limit are cut, not lost
# (what they printed so far stays). Pass STEPS="1 4" to run only some of them.
set -u
cd "$(dirname "$0")/.."
out="${1:-${OUT:-gpu-checks}}"
mkdir -p "$out"
python="${PYTHON:-python3}"

step() {  # number, name, seconds allowed, command...
    local number=$1 name=$2 limit=$3
    shift 3
    case " ${STEPS:-1 2 3 4} " in *" $number "*) ;; *) return ;; esac
    local began=$SECONDS
    echo "== $number $name: $*"
    timeout --kill-after=10 "$limit" "$@" 2>&1 | tee "$out/$number-$name.txt"
    local status=${PIPESTATUS[0]}
    echo "== $number $name: exit status $status after $((SECONDS - began)) s (limit $limit s)" | tee -a "$out/$number-$name.txt"
}

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/0-gpu.txt"
# 1: (a)-(d) at the competition's sizes, start-up, the short study, and the whole run timed (< 300 s)
step 1 throughput 330 "$python" benchmarks/trial_throughput.py --gpu
# 2: what only a GPU shows: staged batches, host-resident images, a real out-of-memory, MPS clients
#    (one test at a time, on the one GPU; nothing installed: the machine has no package registry)
step 2 cuda-tests 120 env SEARCH_TESTS_INSTALL=0 "$python" -m pytest -q -p no:cacheprovider -n 0 tests/training/test_cuda.py
# 3: the study's own batch, where packing has room: (c) and (d) under `search run --mps`'s daemon,
#    and (c) with its steps replayed as CUDA graphs (train.cuda_graphs), the other way to fill the GPU
step 3 batch64-packed 180 "$python" benchmarks/trial_throughput.py --gpu --batch 64 --mps --cuda-graphs --only c,d
# 4: images kept in host memory (staged), and cuDNN autotuning limited to 2 algorithms
step 4 staged-cudnn2 120 "$python" benchmarks/trial_throughput.py --gpu --only a,c --cudnn-limit 2 --staged
