#!/usr/bin/env bash
# Runs every fuzz target in fuzz/ (cargo-fuzz + libFuzzer, stable Rust, --sanitizer none) for a bounded time each.
#
#   scripts/fuzz.sh                 60 s per target (the default)
#   scripts/fuzz.sh 30              what scripts/test.sh runs
#   scripts/fuzz.sh 3600            an hour per target: the longer run before a release or after a parser change
#   scripts/fuzz.sh 600 udp_datagram admin_http     only these targets
#
# Each target fuzzes a copy of its committed seed corpus (fuzz/corpus/<target>/) in a temporary directory, so the
# committed corpus never grows; the seeds, including the regression-* inputs of past crashes, run first. Exits
# non-zero if any target crashed, timed out, ran out of memory or did not build, and prints the artifact (under
# fuzz/artifacts/<target>/, beside the failed run's log) and the command that replays it. To keep a
# finding, copy the artifact to fuzz/corpus/<target>/regression-<what> once it is fixed.
#
# Installs cargo-fuzz with `cargo install --locked` when it is missing. The build (all targets, with coverage
# instrumentation) goes to fuzz/target; the first one compiles the whole crate and takes several minutes.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

seconds="${1:-60}"
shift || true
targets=("$@")
if [ "${#targets[@]}" -eq 0 ]; then
  targets=(control_frame control_session_plaintext udp_datagram admin_http config_zone web_http)
fi
case "$seconds" in
  '' | *[!0-9]*) echo "fuzz: seconds per target must be a number, got '$seconds'" >&2; exit 2 ;;
esac

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz" >&2
  cargo install cargo-fuzz --locked
fi

# Longest input per target: the admin head limit is 8 KiB, so its inputs must be able to go past it.
max_len() {
  case "$1" in
    admin_http) echo 12288 ;;
    web_http) echo 14336 ;; # head 8 KiB + body 4 KiB, and past them
    config_zone) echo 16384 ;;
    *) echo 4096 ;;
  esac
}

for t in "${targets[@]}"; do
  if ! ls "fuzz/corpus/$t"/seed-* >/dev/null 2>&1; then
    echo "fuzz: $t has no committed seed corpus (fuzz/corpus/$t/seed-*): add seeds before fuzzing it" >&2
    exit 2
  fi
done

echo "fuzz: building ${targets[*]}" >&2
for t in "${targets[@]}"; do
  cargo fuzz build --fuzz-dir fuzz --sanitizer none "$t"
done

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
failed=()
summary=()
for t in "${targets[@]}"; do
  corpus="$work/$t"
  mkdir -p "$corpus" "fuzz/artifacts/$t"
  cp -r "fuzz/corpus/$t/." "$corpus/"
  log="$work/$t.log"
  echo "fuzz: $t for ${seconds} s ($(ls "$corpus" | wc -l) seeds)" >&2
  # -timeout: one input taking longer than 25 s is a hang. -rss_limit_mb: the default 2 GiB, stated.
  {
    if cargo fuzz run --fuzz-dir fuzz --sanitizer none "$t" "$corpus" -- \
      -max_total_time="$seconds" -max_len="$(max_len "$t")" -timeout=25 -rss_limit_mb=2048 -print_final_stats=1 \
      2>&1; then
      echo 0 >"$work/$t.status"
    else
      echo $? >"$work/$t.status"
    fi
  } | tee "$log" | { grep -aE '^(#[0-9]+\s+(INITED|DONE)|==[0-9]+== ERROR|thread .* panicked|SUMMARY)' || true; }
  status="$(cat "$work/$t.status")"
  execs="$(grep -aoE 'stat::number_of_executed_units: *[0-9]+' "$log" | tail -1 | grep -oE '[0-9]+$' || echo '?')"
  rate="$(grep -aoE 'stat::average_exec_per_sec: *[0-9]+' "$log" | tail -1 | grep -oE '[0-9]+$' || echo '?')"
  if [ "$status" -ne 0 ]; then
    artifact="$(grep -aoE 'Test unit written to \S+' "$log" | tail -1 | sed 's/Test unit written to //' || true)"
    failed+=("$t")
    summary+=("$(printf '%-28s FAILED (exit %s) after %s execs; artifact: %s' "$t" "$status" "$execs" "${artifact:-none}")")
    kept="fuzz/artifacts/$t/failure-$(date +%Y%m%d-%H%M%S)-$$.log"
    cp "$log" "$kept"
    echo "fuzz: $t FAILED; last lines of its log ($kept):" >&2
    tail -40 "$log" >&2
    if [ -n "$artifact" ]; then
      echo "fuzz: replay with: cargo fuzz run --fuzz-dir fuzz --sanitizer none $t $artifact" >&2
    fi
  else
    summary+=("$(printf '%-28s ok: %s s, %s execs (%s/s), corpus %s -> %s' "$t" "$seconds" "$execs" "$rate" \
      "$(ls "fuzz/corpus/$t" | wc -l)" "$(ls "$corpus" | wc -l)")")
  fi
done

echo
echo "fuzz summary:"
printf '  %s\n' "${summary[@]}"
if [ "${#failed[@]}" -ne 0 ]; then
  echo "fuzz: crashes in: ${failed[*]}" >&2
  exit 1
fi
