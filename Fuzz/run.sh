#!/bin/bash
# Builds the fuzzers and runs each for SECONDS on a scratch copy of its seed corpus (the committed
# Corpus/ never grows). Prints executions, exec/s, coverage and crashes per target; exits non-zero
# when any target crashed, hung, leaked or ran out of memory (its input is kept in ARTIFACTS).
#   Fuzz/run.sh [SECONDS] [TARGET...]     (default: 30 seconds, every target)
# FUZZ_BUILD: scratch path (default .build-fuzz); FUZZ_SKIP_BUILD=1: use what is built;
# FUZZ_ARGS: more libFuzzer flags (e.g. -jobs=2, -max_len=...).
set -u
cd "$(dirname "$0")/.."
SECONDS_EACH=${1:-30}
shift || true
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=(ttrpc vhost-user virtqueue vsock-device oci-spec config-toml netlink)
SWIFT=${SWIFT:-swift}
BUILD=${FUZZ_BUILD:-.build-fuzz}
WORK=$BUILD/fuzz-run
ARTIFACTS=$BUILD/fuzz-artifacts

# Not --sanitize=fuzzer --sanitize=address: SwiftPM passes those as two -sanitize= flags in no fixed
# order and swiftc keeps only the last, which silently drops either coverage or ASan. --sanitize=fuzzer
# (so SwiftPM leaves main to libFuzzer) with one combined flag after it, and ASan for C and C++ too.
FLAGS=(--package-path Fuzz --scratch-path "$BUILD" -c release --sanitize=fuzzer -Xswiftc -sanitize=fuzzer,address
       -Xswiftc -enable-testing -Xcc -fsanitize=address -Xcxx -fsanitize=address)
if [ "${FUZZ_SKIP_BUILD:-0}" != 1 ]; then
    # Release with AddressSanitizer: several times the executions of a debug build, and the bugs that
    # matter here (traps, out-of-bounds, leaks, hangs) show up the same. -enable-testing lets the
    # harnesses @testable-import internal entry points.
    start=$(date +%s)
    "$SWIFT" build "${FLAGS[@]}" || exit 1
    echo "fuzzers built in $(( $(date +%s) - start )) s"
fi
BIN=$("$SWIFT" build "${FLAGS[@]}" --show-bin-path)

# The Swift runtime's crash handler gets in the way of AddressSanitizer's reports.
export SWIFT_BACKTRACE=enable=no
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1}
export LSAN_OPTIONS=${LSAN_OPTIONS:-suppressions=$PWD/Fuzz/lsan.supp:print_suppressions=0}
failed=0
summary=()
for target in "${TARGETS[@]}"; do
    corpus=$WORK/$target
    rm -rf "$corpus" "$ARTIFACTS/$target"
    mkdir -p "$corpus" "$ARTIFACTS/$target"
    cp Fuzz/Corpus/"$target"/* "$corpus"/
    extra=()
    [ -f Fuzz/Dictionaries/"$target".dict ] && extra=(-dict=Fuzz/Dictionaries/"$target".dict)
    # libFuzzer reruns an input under LeakSanitizer whenever it malloced more than it freed. ttrpc's
    # handler Tasks and NIO's test loop free on other threads after the input returns, and TOMLKit
    # leaks on every parse (lsan.supp), so for those two that is every input, 10-50 times slower.
    # They get LeakSanitizer's check at exit instead, and ttrpc checks each connection is freed.
    case $target in ttrpc | config-toml) extra+=(-detect_leaks=0) ;; esac
    log=$WORK/$target.log
    echo "== fuzz-$target for ${SECONDS_EACH}s"
    # -timeout: an input that runs for 10 s is a hang (a guest that can spin a host thread).
    "$BIN/fuzz-$target" "$corpus" -max_total_time="$SECONDS_EACH" -timeout=10 -rss_limit_mb=4096 \
        -print_final_stats=1 -artifact_prefix="$ARTIFACTS/$target/" "${extra[@]}" ${FUZZ_ARGS:-} >"$log" 2>&1
    rc=$?
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | cut -d' ' -f2)
    crashes=$(find "$ARTIFACTS/$target" -type f | wc -l)
    # A leak found at exit leaves no input behind, only the exit status.
    [ "$rc" -ne 0 ] && [ "$crashes" -eq 0 ] && crashes=1
    if [ "$rc" -ne 0 ] || [ "$crashes" -ne 0 ]; then
        failed=1
        grep -E 'ERROR|SUMMARY|invariant|Fatal error|deadly signal|timeout' "$log" | head -5
        find "$ARTIFACTS/$target" -type f -printf '   input: %p\n'
        echo "   log: $log"
    fi
    line=$(printf '%-14s execs %10s  exec/s %7s  cov %6s  crashes %s' "$target" "${execs:-?}" "${rate:-?}" \
        "${cov:-?}" "$crashes")
    echo "$line"
    summary+=("$line")
done
echo "== summary (${SECONDS_EACH}s each)"
printf '%s\n' "${summary[@]}"
exit $failed
