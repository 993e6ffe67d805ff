#!/usr/bin/env bash
# Builds fastbptt with AddressSanitizer + UndefinedBehaviorSanitizer into its own venv and build directory, then
# runs the whole test suite under them. Any sanitizer report fails the run.
#
#   tools/sanitize.sh                       # build (if needed) and run the suite
#   tools/sanitize.sh -k fuzz -x            # arguments go to pytest
#
# Environment:
#   FASTBPTT_SANITIZE_VENV   the venv to create and use          (default: build/sanitize/venv)
#   FASTBPTT_SANITIZERS      the -fsanitize= list                (default: address,undefined)
#   CXX                      the compiler                        (default: g++)
#   ASAN_RUNTIME             the ASan runtime to preload         (default: $CXX -print-file-name=libasan.so;
#                            for clang: $(clang++ -print-file-name=libclang_rt.asan-x86_64.so))
#
# The Python interpreter is not instrumented, so the ASan runtime of the compiler and libstdc++ are preloaded
# (LD_PRELOAD) ahead of everything else. CPython frees little at exit by design, so leak detection is off
# (detect_leaks=0); the leak tests of the suite measure the resident set instead. allocator_may_return_null=1 lets
# an impossible allocation fail as malloc does (the suite checks that it becomes MemoryError) instead of aborting. ASan and UBSan reports are
# written to build/sanitize/reports.*; the script fails when there is any. The suite sees FASTBPTT_SANITIZED, which
# turns on the canary test (tests/test_reliability.py::test_sanitizers_are_active) and skips the RSS-based leak
# tests (ASan's quarantine holds freed memory on purpose). The default build (pip install .) is unchanged:
# FASTBPTT_SANITIZE is empty there.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="$root/build/sanitize"
venv="${FASTBPTT_SANITIZE_VENV:-$out/venv}"
sanitizers="${FASTBPTT_SANITIZERS:-address,undefined}"
cxx="${CXX:-g++}"
mkdir -p "$out"

if [[ ! -x "$venv/bin/python" ]]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q numpy tqdm pytest hypothesis psutil threadpoolctl \
    cmeel-eigen scikit-build-core pybind11 ninja cmake
fi

start=$(date +%s)
# Not editable: the sanitized module lives in this venv only. Release as the default build (the suite checks the
# build type), with -g for line numbers in the reports.
CXX="$cxx" "$venv/bin/pip" install -q --no-build-isolation --no-deps \
  -Cbuild-dir="$out/{wheel_tag}" \
  -Ccmake.build-type=Release \
  -Ccmake.define.CMAKE_CXX_FLAGS=-g \
  -Ccmake.define.FASTBPTT_SANITIZE="$sanitizers" \
  "$root"
built=$(date +%s)

asan_runtime="${ASAN_RUNTIME:-$("$cxx" -print-file-name=libasan.so)}"
if [[ ! -e "$asan_runtime" ]]; then
  echo "sanitize.sh: $cxx has no libasan.so ($asan_runtime)" >&2
  exit 2
fi
# libstdc++ too, and right after the runtime: the interpreter is C, so without it ASan finds no __cxa_throw to wrap
# when it starts, and the first C++ exception aborts ("real___cxa_throw != 0").
preload="$asan_runtime $("$cxx" -print-file-name=libstdc++.so)"
rm -f "$out"/reports.*

status=0
(
  # Run from the tests directory so that the suite imports the installed (sanitized) package, not python/.
  cd "$root/tests"
  LD_PRELOAD="$preload" \
  ASAN_OPTIONS="detect_leaks=0:allocator_may_return_null=1:abort_on_error=1:strict_string_checks=1:detect_stack_use_after_return=1:log_path=$out/reports.asan" \
  UBSAN_OPTIONS="print_stacktrace=1:report_error_type=1:halt_on_error=1" \
  FASTBPTT_SANITIZED="$sanitizers" \
  FASTBPTT_SANITIZE_LOGS="$out" \
    "$venv/bin/python" -m pytest -q -p no:cacheprovider --capture=sys --durations=10 --rootdir="$root" \
      -c "$root/pyproject.toml" "$@" . 2>&1 | tee "$out/pytest.log"
  exit "${PIPESTATUS[0]}"
) || status=$?
finished=$(date +%s)

# ASan writes to its log files: every line there except its notes on the impossible allocations that the suite
# makes on purpose (they fail, as allocator_may_return_null asks, and the suite checks the MemoryError) counts as a
# report. UBSan ignores log_path next to ASan and writes to stderr, which --capture=sys leaves uncaptured, so its
# reports are in pytest.log (and halt_on_error stops the run at the first).
reports=$(find "$out" -maxdepth 1 -name 'reports.*' | sort)
findings=""
for report in $reports; do
  if grep -v -q -e 'WARNING: AddressSanitizer failed to allocate' "$report"; then
    findings="$findings $report"
  fi
done
if grep -q -e 'runtime error:' -e 'ERROR: AddressSanitizer' "$out/pytest.log"; then
  findings="$findings $out/pytest.log"
fi
echo "sanitize.sh: build $((built - start)) s, tests $((finished - built)) s, pytest exit status $status"
if [[ -n "$findings" ]]; then
  echo "sanitize.sh: sanitizer reports:" >&2
  for report in $findings; do
    echo "== $report" >&2
    cat "$report" >&2
  done
  exit 1
fi
echo "sanitize.sh: no sanitizer reports"
exit "$status"
