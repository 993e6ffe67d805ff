#!/usr/bin/env bash
# The long bad-input campaign: tests/test_fuzz.py with many random examples per test (the regular suite runs a few
# hundred derandomised ones).
#
#   tools/fuzz.sh                  # 10,000 examples per test
#   tools/fuzz.sh 50000            # another count
#   PYTHON=build/sanitize/venv/bin/python tools/fuzz.sh   # with another interpreter
#
# Each test prints hypothesis's statistics (examples run, how many were rejected as invalid draws, time per
# example). A failure prints the shrunk failing call; `--hypothesis-seed=N` (add it after the count) replays a run.
# To run it under the sanitizers, pass the arguments to tools/sanitize.sh instead:
#   FASTBPTT_FUZZ_EXAMPLES=10000 tools/sanitize.sh test_fuzz.py --hypothesis-show-statistics
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
examples="${1:-10000}"
shift || true
cd "$root"
FASTBPTT_FUZZ_EXAMPLES="$examples" "${PYTHON:-python}" -m pytest tests/test_fuzz.py -q -p no:cacheprovider \
  --hypothesis-show-statistics "$@"
