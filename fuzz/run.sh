#!/usr/bin/env bash
# Fuzzes the config path (YAML parse → raw config → validated plan → every stage planned, as
# `segflow validate` does) with cargo-fuzz / libFuzzer for a bounded time, then prints how long
# it ran, how many inputs it tried and the corpus size.
#
#   fuzz/run.sh [SECONDS]        default 300
#
# Installs cargo-fuzz if it is missing. Works on stable Rust: `--sanitizer none` needs no
# nightly flag (the coverage instrumentation is a stable -C option). The first build
# instruments every crate, DataFusion included: minutes, once; the target folder and the corpus
# live under ~/.cache/segflow/fuzz, so later runs are incremental and the corpus grows.
# Exit status: 0 when no input crashed, libFuzzer's status otherwise (the crashing input is in
# fuzz/artifacts/config/, ready for `cargo fuzz run config <file>`).
set -euo pipefail
cd "$(dirname "$0")"
seconds="${1:-300}"
cache="$HOME/.cache/segflow/fuzz"
corpus="$cache/corpus/config"
mkdir -p "$corpus"

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz: installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

# Seeds: every pipeline the project ships and every bad-input case (named by content, so a
# rerun does not duplicate them).
for seed in ../pipelines/*.yaml ../tests/bad_inputs/*/pipeline.yaml ../benches/clean_bench.yaml; do
    [[ -f $seed ]] || continue
    cp "$seed" "$corpus/seed-$(sha1sum "$seed" | cut -c1-16)"
done
before=$(find "$corpus" -type f | wc -l)

started=$(date +%s)
status=0
cargo fuzz run config --dev --sanitizer none --target-dir "$cache/target" -- \
    -max_total_time="$seconds" -timeout=60 -rss_limit_mb=4096 -max_len=8192 \
    -dict=config.dict -print_final_stats=1 "$corpus" 2>&1 | tee "$cache/last-run.log" || status=$?
elapsed=$(( $(date +%s) - started ))

after=$(find "$corpus" -type f | wc -l)
runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$cache/last-run.log" | grep -o '[0-9]*$' || echo "?")
echo "fuzz: config target ran ${seconds}s of fuzzing (${elapsed}s with the build), ${runs} inputs tried; corpus ${before} → ${after} files ($(du -sh "$corpus" | cut -f1)); exit ${status}"
exit "$status"
