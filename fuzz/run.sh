#!/usr/bin/env bash
# Runs every fuzz target for a while (cargo-fuzz, libFuzzer) from its seed
# corpus, and prints the executions per target. Exits non-zero on the first
# crash, leak, timeout or out-of-memory input, which libFuzzer leaves in
# fuzz/artifacts/TARGET/ (add it as a regression test, then fix the bug).
#
# Usage:  fuzz/run.sh [--seconds N] [--keep DIR] [TARGET...]
#   --seconds N  per target (default 60)
#   --keep DIR   keep the corpora grown here (default: a temporary folder;
#                the committed seeds in fuzz/corpus/ are only read)
# Needs:  cargo install cargo-fuzz (installed here if missing). Stable Rust:
#         RUSTC_BOOTSTRAP=1 lets it take the sanitizer flags.
set -euo pipefail
cd "$(dirname "$0")"

SECONDS_EACH=60
KEEP=
TARGETS=()
while [ $# -gt 0 ]; do
    case "$1" in
        --seconds) SECONDS_EACH=$2; shift 2 ;;
        --keep) KEEP=$2; shift 2 ;;
        -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
        -*) echo "unknown argument: $1" >&2; exit 2 ;;
        *) TARGETS+=("$1"); shift ;;
    esac
done

export RUSTC_BOOTSTRAP=1
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --version 0.13.2 --locked --quiet
[ ${#TARGETS[@]} -gt 0 ] || mapfile -t TARGETS < <(cargo fuzz list)

# Release code with debug assertions: integer overflow panics, as it
# would in a debug build, and AddressSanitizer watches the unsafe code of
# the dependencies.
FLAGS=(--release --debug-assertions)
cargo fuzz build "${FLAGS[@]}"

WORK=${KEEP:-$(mktemp -d /tmp/unstick-fuzz.XXXXXX)}
[ -n "$KEEP" ] || trap 'rm -rf "$WORK"' EXIT
summary=()
for t in "${TARGETS[@]}"; do
    mkdir -p "$WORK/$t"
    log="$WORK/$t.log"
    # The first folder gets what the run finds; the seeds are read only.
    if ! cargo fuzz run "${FLAGS[@]}" "$t" "$WORK/$t" "corpus/$t" -- \
        -max_total_time="$SECONDS_EACH" -timeout=10 -rss_limit_mb=2048 \
        -print_final_stats=1 >"$log" 2>&1; then
        tail -n 60 "$log" >&2
        echo "fuzz target $t failed; the input is in fuzz/artifacts/$t/" >&2
        exit 1
    fi
    runs=$(awk '/stat::number_of_executed_units/ {print $NF}' "$log")
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -n 1 | cut -d' ' -f2)
    summary+=("$(printf '%-14s %12s executions in %ss, %s coverage points, corpus %s inputs' \
        "$t" "$runs" "$SECONDS_EACH" "${cov:-?}" "$(find "$WORK/$t" "corpus/$t" -type f | wc -l)")")
done
printf '%s\n' "${summary[@]}"
