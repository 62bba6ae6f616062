#!/usr/bin/env bash
# The long run of the decoder property tests (issue #10): the same tests
# `cargo test` runs with a few hundred cases each, here with CASES each.
#
#   bench/proptest.sh
#   CASES=1000000 LIMIT_SECS=3600 bench/proptest.sh
#
# Environment:
#   CASES=100000     cases per property (PROPTEST_CASES, read by every test)
#   LIMIT_SECS=1800  each of the two test binaries is stopped after this long
#                    (exit 124), so the run is bounded whatever CASES says
#
# Runs every unit test of the engine (bencode, wire codec, extension
# payloads, metainfo, magnets, the DHT token, and the pure modules beside
# them) and the decoder tests of the binary's sync module (sync messages,
# index records and version vectors, discovery packets, folder keys), in
# the debug profile (dependencies are optimised by the workspace profile;
# our code keeps its overflow checks, which is what finds overflows).
# A failure prints the input proptest shrank it to and adds its seed to a
# `proptest-regressions/` file beside the source: commit that file with the
# fix, so `cargo test` replays the case from then on.
# Nothing binds outside loopback. The summary goes to stdout and is appended
# to bench/results/proptest.jsonl.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
CASES=${CASES:-100000}
LIMIT_SECS=${LIMIT_SECS:-1800}

for v in CASES LIMIT_SECS; do
    if ! [[ ${!v} =~ ^[0-9]+$ ]] || ((${!v} == 0)); then
        echo "proptest: $v must be a positive integer" >&2
        exit 2
    fi
done

cd "$ROOT"
cargo test --locked -p p2pfile-engine --lib --no-run
cargo test --locked --bin p2pfile --no-run

mkdir -p "$HERE/results"
status=0
run() {
    local name=$1
    shift
    local start end rc=0
    start=$(date +%s)
    PROPTEST_CASES=$CASES timeout --signal=INT --kill-after=30 "$LIMIT_SECS" \
        cargo test --locked "$@" || rc=$?
    end=$(date +%s)
    printf '%-8s cases=%s exit=%s seconds=%s\n' "$name" "$CASES" "$rc" "$((end - start))"
    printf '{"suite":"%s","cases":%s,"exit":%s,"seconds":%s,"commit":"%s","date":"%s"}\n' \
        "$name" "$CASES" "$rc" "$((end - start))" \
        "$(git rev-parse --short HEAD 2>/dev/null || echo unknown)" \
        "$(date -u +%FT%TZ)" >>"$HERE/results/proptest.jsonl"
    if ((rc != 0)); then status=$rc; fi
}

run engine -p p2pfile-engine --lib
# The binary's decoders only: its other property tests (merge, plan) are
# not about input from peers, and discovery's socket tests are left out.
run sync --bin p2pfile -- sync::protocol:: sync::index:: sync::key:: sync::version:: \
    sync::discovery::tests::random_bytes sync::discovery::tests::mutated \
    sync::discovery::tests::edited sync::discovery::tests::every_announcement
exit "$status"
