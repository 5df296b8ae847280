#!/usr/bin/env bash
# A longer run of the fault matrix (tests/nemesis.rs): every scenario on a
# 5-node cluster in network namespaces, each fault held at least SECONDS,
# the clients' random choices seeded with SEED; then a table of operations,
# faults and violations per scenario. Needs root, like the tests.
#
#   bench/nemesis.sh [--seed N] [--seconds S]     (defaults: random, 60)
#
# A scenario that finds a violation fails and prints what it saw; run it
# again with the same seed: RINGKV_NEMESIS_SEED=N RINGKV_NEMESIS_SECONDS=S
# cargo nextest run --test nemesis -E 'test(NAME)'.
set -euo pipefail
cd "$(dirname "$0")/.."

seed="$(od -An -N4 -tu4 /dev/urandom | tr -d ' ')"
seconds=60
while [ $# -gt 0 ]; do
  case "$1" in
    --seed) seed="$2"; shift 2 ;;
    --seconds) seconds="$2"; shift 2 ;;
    *) echo "usage: $0 [--seed N] [--seconds S]" >&2; exit 2 ;;
  esac
done

log="$(mktemp)"
trap 'rm -f "$log"' EXIT
echo "fault matrix: seed $seed, each fault held at least ${seconds}s"
status=0
RINGKV_NEMESIS_SEED="$seed" RINGKV_NEMESIS_SECONDS="$seconds" \
  cargo nextest run --locked --test nemesis --no-fail-fast --no-capture \
  >"$log" 2>&1 || status=$?

# Lines: "nemesis NAME seed S: changes ok/failed/unknown a/b/c, reads d/e/f,
# stale reads g, final reads h, violations i, disagreements j".
printf '\n%-10s %22s %22s %6s %6s %10s %13s\n' \
  scenario "writes ok/failed/unkn" "reads ok/failed/unkn" stale final violations disagreements
grep -E '^nemesis [a-z-]+ seed [0-9]+: ' "$log" | sed -E \
  's/^nemesis ([a-z-]+) seed [0-9]+: changes ok\/failed\/unknown ([0-9\/]+), reads ([0-9\/]+), stale reads ([0-9]+), final reads ([0-9]+), violations ([0-9]+), disagreements ([0-9]+)$/\1 \2 \3 \4 \5 \6 \7/' |
  while read -r name changes reads stale final violations disagreements; do
    printf '%-10s %22s %22s %6s %6s %10s %13s\n' \
      "$name" "$changes" "$reads" "$stale" "$final" "$violations" "$disagreements"
  done
echo
grep -E '^ +Summary|^ +FAIL ' "$log" | sort -u || true
if [ "$status" -ne 0 ]; then
  echo "a scenario failed; its output:" >&2
  grep -A40 'panicked' "$log" | head -80 >&2
fi
exit "$status"
