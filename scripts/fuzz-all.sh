#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for ${FUZZ_SECONDS:-60} seconds each, one after the other
# (one fuzzer process at a time), and exits non-zero if any target crashed, leaked, hung or ran out
# of memory. See fuzz/README.md.
#
#   scripts/fuzz-all.sh                          # every target, 60 s each
#   FUZZ_SECONDS=300 scripts/fuzz-all.sh         # every target, 5 min each
#   scripts/fuzz-all.sh decode_magic roundtrip   # only these targets
#
# Works on a stable toolchain: RUSTC_BOOTSTRAP=1 lets cargo-fuzz pass its -Z flags to stable
# rustc. The address sanitizer is used when it builds; otherwise (FUZZ_SANITIZER unset) the
# script falls back to `--sanitizer none`. Set FUZZ_SANITIZER=none|address to choose.
#
# Crash inputs land in fuzz/artifacts/<target>/, the growing corpus in fuzz/corpus/<target>/, and
# the fuzzer output of each run in fuzz/artifacts/logs/<target>.log (all git-ignored).
set -uo pipefail
cd "$(dirname "$0")/.."

seconds=${FUZZ_SECONDS:-60}
if ! [[ $seconds =~ ^[0-9]+$ ]] || ((seconds < 1)); then
    echo "FUZZ_SECONDS must be a positive number of seconds (got '$seconds')" >&2
    exit 2
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "cargo-fuzz not found: cargo install cargo-fuzz" >&2
    exit 2
fi
export RUSTC_BOOTSTRAP=1

# Cargo caches rustc's answers in fuzz/target/.rustc_info.json without keying them on
# RUSTC_BOOTSTRAP: one `cargo fuzz build` run without it caches "-Z is nightly only" for good.
# The file is only a cache; cargo rewrites it.
rm -f fuzz/target/.rustc_info.json

san_args=()
case "${FUZZ_SANITIZER:-}" in
    "")
        if ! cargo fuzz build; then
            echo "== the address-sanitizer build failed; falling back to --sanitizer none" >&2
            san_args=(--sanitizer none)
            cargo fuzz build "${san_args[@]}" || exit 2
        fi
        ;;
    address) cargo fuzz build || exit 2 ;;
    none)
        san_args=(--sanitizer none)
        cargo fuzz build "${san_args[@]}" || exit 2
        ;;
    *)
        echo "FUZZ_SANITIZER must be 'address' or 'none'" >&2
        exit 2
        ;;
esac

if (($# > 0)); then
    targets=("$@")
else
    mapfile -t targets < <(cargo fuzz list)
fi
if ((${#targets[@]} == 0)); then
    echo "no fuzz targets found" >&2
    exit 2
fi

logs=fuzz/artifacts/logs
mkdir -p "$logs"
failed=()
for target in "${targets[@]}"; do
    log="$logs/$target.log"
    echo "== $target: ${seconds}s (log: $log)"
    mkdir -p "fuzz/corpus/$target"
    cargo fuzz run "${san_args[@]}" "$target" -- -max_total_time="$seconds" >"$log" 2>&1
    status=$?
    runs=$(grep -oE 'Done [0-9]+ runs in [0-9]+ second' "$log" | tail -1)
    if ((status == 0)); then
        echo "   ok: ${runs:-?}"
    else
        failed+=("$target")
        echo "   FAILED (exit $status)"
        grep -E -m3 -A1 "panicked at|ERROR: libFuzzer|ERROR: AddressSanitizer|==ERROR" "$log" | sed 's/^/   | /'
        grep -E -m1 "Test unit written to" "$log" | sed 's/^/   | /'
    fi
done

if ((${#failed[@]} > 0)); then
    echo "== ${#failed[@]} of ${#targets[@]} targets failed: ${failed[*]}"
    echo "   reproduce: RUSTC_BOOTSTRAP=1 cargo fuzz run ${san_args[*]:+${san_args[*]} }<target> fuzz/artifacts/<target>/<crash-file>"
    exit 1
fi
echo "== all ${#targets[@]} targets ran ${seconds}s without a crash"
