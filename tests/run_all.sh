#!/usr/bin/env bash
# The whole test suite: the pure-core tests once, then tests/comfy inside a real ComfyUI for every host.
#
#   bash tests/run_all.sh [COMFYUI_SOURCE ...]
#
# A COMFYUI_SOURCE is a ComfyUI checkout or a .tar.gz of one; tests/comfy_host.py turns each into a
# cached CPU test host ($SCAPRE_HOST_DIR/<version>/, default ~/.cache/scapre-hosts/<version>/). Without
# arguments the sources are $SCAPRE_COMFY_SOURCES (space-separated), else the snapshots in
# ../shared/comfyui/*.tar.gz when that folder exists. With no source at all this is `python -m pytest -q`:
# the ComfyUI tests skip with a reason (and fail when CI=true).
#
# Environment: PYTHON (python for the core tests; default the first host's venv, or `python` / `python3`
# without a host; comfy_host.py runs with it too, or with `python`); SCAPRE_COMFY_LOCK (a file
# that serialises ComfyUI suites machine-wide with flock, default /tmp/scapre-comfy.lock: one suite at a time);
# PYTEST_ADDOPTS as usual. Each ComfyUI suite's stage line ends with the peak memory of its process tree.
set -uo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-$(command -v python || command -v python3)}
LOCK=${SCAPRE_COMFY_LOCK:-/tmp/scapre-comfy.lock}
if [ $# -gt 0 ]; then
    sources=("$@")
elif [ -n "${SCAPRE_COMFY_SOURCES:-}" ]; then
    read -r -a sources <<< "$SCAPRE_COMFY_SOURCES"
else
    shopt -s nullglob
    sources=(../shared/comfyui/comfyui-*.tar.gz)
    shopt -u nullglob
fi

declare -a summary=()
failed=0
stage() {  # stage NAME COMMAND...: run it, time it, remember the result
    local name=$1 t0 rc
    shift
    echo "=== ${name}" >&2
    t0=$(date +%s)
    "$@"
    rc=$?
    summary+=("$(printf '%-40s %5ss  %s' "$name" "$(( $(date +%s) - t0 ))" "$([ $rc -eq 0 ] && echo ok || echo "FAILED ($rc)")")")
    [ $rc -eq 0 ] || failed=1
    return $rc
}
report() {
    echo "=== run_all.sh stages"
    printf '%s\n' "${summary[@]}"
}

if [ ${#sources[@]} -eq 0 ]; then
    echo "no ComfyUI source (arguments, SCAPRE_COMFY_SOURCES or ../shared/comfyui/): the ComfyUI tests skip" \
         "(and fail with CI=true)"
    stage "pytest (no ComfyUI host)" "$PY" -m pytest -q
    report
    exit $failed
fi

hosts=()
printed=$(mktemp)
for src in "${sources[@]}"; do
    # the last line comfy_host.py prints is the host directory
    if stage "host $(basename "$src")" "$PY" tests/comfy_host.py "$src" > "$printed"; then
        hosts+=("$(tail -n 1 "$printed")")
    fi
done
rm -f "$printed"

# The core tests once, with $PYTHON if set, else the first host's venv (torch 2.13.0 + the pack's requirements).
CORE_PY=${PYTHON:-${hosts[0]:+${hosts[0]}/venv/bin/python}}
stage "core tests" "${CORE_PY:-$PY}" -m pytest -q --ignore=tests/comfy

# One lock for all host suites: never two at once on this machine, and no waiting between them.
if [ ${#hosts[@]} -gt 0 ] && command -v flock > /dev/null; then
    exec 9> "$LOCK"
    stage "wait for $LOCK" flock 9
fi
# Each suite under tests/peak_memory.py: the peak memory of its whole process tree (pytest, the ComfyUI servers
# and command-line runs it starts, the browser) is printed with the stage's time.
peak_file=$(mktemp)
# Three pytest processes per host (markers set in tests/comfy/conftest.py and the test modules): the tests that load
# the SDXL-family checkpoint (sdxl), those that start ComfyUI servers of their own (servers: HTTP and frontend tests,
# evaluate on two servers, the DiT examples over HTTP) or run the command line on a checkpoint (cli), and the rest, so that the in-process
# SD1.5 model, the SDXL-family model, the servers' models and the command line's are never in memory together.
# The three expressions split the tests: each runs exactly once per host.
for host in "${hosts[@]}"; do
    for part in "not sdxl and not servers and not cli" "(servers or cli) and not sdxl" "sdxl"; do
        stage "ComfyUI $(basename "$host") tests (-m \"$part\")" "$PY" tests/peak_memory.py --peak-file "$peak_file" \
            -- env COMFYUI_PATH="$host/ComfyUI" "$host/venv/bin/python" -m pytest -q -m "$part" tests/comfy
        summary[${#summary[@]}-1]+="  peak $(cat "$peak_file" 2>/dev/null || echo '?') GiB"  # RSS and PSS sums
    done
done
rm -f "$peak_file"
exec 9>&-

report
[ ${#hosts[@]} -eq ${#sources[@]} ] || { echo "a ComfyUI host could not be built"; failed=1; }
exit $failed
