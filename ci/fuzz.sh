#!/usr/bin/env bash
# make fuzz: runs each coverage-guided fuzz target of the host's parsers
# (rust/fuzz/, cargo-fuzz and libFuzzer) for FUZZ_SECONDS (default 60) each, then
# prints, per target, the inputs tried, the coverage reached and the crashes
# found. Needs a nightly Rust toolchain; without one it says so in one line
# and does nothing. Installs cargo-fuzz when it is missing.
#
# Each target starts from its seeds (rust/fuzz/seeds/<target>, kept in git), the
# crashes found and fixed before (rust/fuzz/crashes/<target>, kept in git; the
# tests replay both) and the corpus earlier runs grew (rust/fuzz/corpus/<target>,
# not kept). A new crash is written to rust/fuzz/artifacts/<target>/; once it is
# fixed, move it to rust/fuzz/crashes/<target>/.
#
#   FUZZ_SECONDS=300 make fuzz           every target, 5 minutes each
#   FUZZ_TARGETS="frame lines" make fuzz  some of them
set -euo pipefail
cd "$(dirname "$0")/../rust/fuzz"

seconds="${FUZZ_SECONDS:-60}"
read -r -a targets <<<"${FUZZ_TARGETS:-frame jsonrpc lines request}"

if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "make fuzz: not run: cargo-fuzz needs a nightly Rust toolchain, and there is none (rustup toolchain install nightly)"
    exit 0
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "==> installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

echo "==> building the fuzz targets (nightly, AddressSanitizer)"
cargo +nightly fuzz build --fuzz-dir .

results=()
failed=0
for t in "${targets[@]}"; do
    echo "==> fuzzing $t for ${seconds} s"
    mkdir -p "corpus/$t" "artifacts/$t"
    dirs=("corpus/$t" "seeds/$t")
    [[ -d "crashes/$t" ]] && dirs+=("crashes/$t")
    opts=("-max_total_time=$seconds" "-artifact_prefix=artifacts/$t/" "-print_final_stats=1" "-max_len=16384")
    [[ -f "dicts/$t.dict" ]] && opts+=("-dict=dicts/$t.dict")
    log="artifacts/$t/last-run.log"
    started="artifacts/$t/.started"
    touch "$started"
    status=0
    cargo +nightly fuzz run --fuzz-dir . "$t" "${dirs[@]}" -- "${opts[@]}" >"$log" 2>&1 || status=$?
    runs=$(grep -o 'stat::number_of_executed_units: [0-9]*' "$log" | tail -1 | grep -o '[0-9]*$' || true)
    cov=$(grep -Eo '^#[0-9]+.*cov: [0-9]+ ft: [0-9]+' "$log" | tail -1 | grep -Eo 'cov: [0-9]+ ft: [0-9]+' || true)
    crashes=$(find "artifacts/$t" -maxdepth 1 -type f -newer "$started" \( -name 'crash-*' -o -name 'leak-*' \
        -o -name 'timeout-*' -o -name 'oom-*' \) | wc -l)
    if [[ $status -ne 0 || $crashes -gt 0 ]]; then
        failed=1
        grep -E 'panicked|ERROR: libFuzzer|SUMMARY' "$log" | head -5 || true
        echo "   (the whole log: rust/fuzz/$log)"
    fi
    results+=("$(printf '%-8s %14s  %-22s %s' "$t" "${runs:-?}" "${cov:-?}" "$crashes")")
done

echo
echo "fuzz run: ${seconds} s per target"
printf '%-8s %14s  %-22s %s\n' target "inputs tried" coverage "crashes (rust/fuzz/artifacts)"
printf '%s\n' "${results[@]}"
if [[ $failed -ne 0 ]]; then
    echo "make fuzz: FAILED: a target crashed; fix it, then move its input to rust/fuzz/crashes/<target>/ (the tests replay it)"
    exit 1
fi
