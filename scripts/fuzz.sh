#!/usr/bin/env bash
# libFuzzer targets of fuzz/ (clang only), built into build/fuzz with ASan + UBSan.
#
#   scripts/fuzz.sh build                    configure + build build/fuzz (jobs: $PERCH_FUZZ_JOBS, default nproc)
#   scripts/fuzz.sh seeds                    (re)generate seed corpora into build/fuzz/seeds/<target>
#   scripts/fuzz.sh run TARGET SECONDS       fuzz one target; corpus build/fuzz/corpus/<target>, crashes in
#                                            build/fuzz/artifacts/<target>/ (exit 1 if one is found); the
#                                            inputs of fuzz/regressions/<target>/ (past crashes) run first
#   scripts/fuzz.sh bounded [SECONDS]        build, seeds, every target for SECONDS (default 22; <= 2 min in all)
#   scripts/fuzz.sh campaign SECONDS         every target for SECONDS each, one after another, log per target
#
# Exit code 77 (CTest: skipped) when clang++ or its libFuzzer runtime is missing.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
b="$here/build/fuzz"
targets=(fuzz_onnx_load fuzz_npy fuzz_idx fuzz_qdq fuzz_int8_lower)

have_libfuzzer() {
  command -v clang++ >/dev/null 2>&1 || return 1
  echo 'extern "C" int LLVMFuzzerTestOneInput(const unsigned char*, unsigned long) { return 0; }' |
    clang++ -x c++ -fsanitize=fuzzer,address - -o /dev/null >/dev/null 2>&1
}

build() {
  have_libfuzzer || { echo "fuzz.sh: SKIPPED: clang++ with libFuzzer not installed (apt-get install clang)"; exit 77; }
  cmake -S "$here" -B "$b" -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -g1 -DNDEBUG" -DPERCH_BUILD_TESTS=OFF -DPERCH_BUILD_FUZZ=ON >/dev/null
  cmake --build "$b" -j "${PERCH_FUZZ_JOBS:-$(nproc)}" --target "${targets[@]}" perch_fuzz_seeds
}

seeds() { "$b/fuzz/perch_fuzz_seeds" "$b/seeds"; }

run() {
  local t="$1" secs="$2"
  mkdir -p "$b/corpus/$t" "$b/artifacts/$t"
  export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:allocator_may_return_null=0}"
  export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"
  # -rss_limit_mb / -malloc_limit_mb: perch must refuse absurd sizes before allocating, so a 1 GiB malloc is
  # already a finding. -timeout: one input taking 10 s is a hang (PERCH_FUZZ_TIMEOUT raises it on a loaded
  # machine, where a starved process can spend 10 s of wall time on a 0.1 s input).
  "$b/fuzz/$t" ${PERCH_FUZZ_SEED:+-seed=$PERCH_FUZZ_SEED} -max_total_time="$secs" -timeout="${PERCH_FUZZ_TIMEOUT:-10}" -rss_limit_mb=2048 -malloc_limit_mb=1024 -print_final_stats=1 \
    -artifact_prefix="$b/artifacts/$t/" "$b/corpus/$t" "$b/seeds/$t" \
    $( [ -d "$here/fuzz/regressions/$t" ] && echo "$here/fuzz/regressions/$t" )
}

case "${1:-}" in
  build) build ;;
  seeds) seeds ;;
  run) run "$2" "$3" ;;
  bounded)
    secs="${2:-22}"
    export PERCH_FUZZ_SEED="${PERCH_FUZZ_SEED:-1}"  # reproducible in CI; set another seed to explore
    build >/dev/null
    seeds
    status=0
    for t in "${targets[@]}"; do
      echo "== $t: ${secs}s"
      log="$b/bounded_$t.log"
      if run "$t" "$secs" >"$log" 2>&1; then
        grep -E "^(stat::number_of_executed_units|stat::new_units_added|Done)" "$log" || true
      else
        status=1
        tail -n 40 "$log"
      fi
    done
    exit "$status" ;;
  campaign)
    secs="$2"
    status=0
    for t in "${targets[@]}"; do
      run "$t" "$secs" >"$b/campaign_$t.log" 2>&1 || status=1
      tail -n 12 "$b/campaign_$t.log"
    done
    exit "$status" ;;
  *) sed -n '2,13p' "${BASH_SOURCE[0]}"; exit 2 ;;
esac
