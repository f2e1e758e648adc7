#!/usr/bin/env bash
# Fails (exit 1) when a committed leaderboard markdown is not what its Parquet file renders to, so
# a PR that adds results also carries the regenerated markdown. Pairs: leaderboards/results.parquet
# -> leaderboards/README.md (the main leaderboard), leaderboards/NAME.parquet -> leaderboards/NAME.md
# (a study kept apart, e.g. long-training), and when a committed file holds a row below the
# publication standard (`ssmbench leaderboard audit`: AutoAttack on fewer than 200 examples, or
# than the whole test split where it is smaller). Called by .ci/run and by ci/publish-leaderboard.yml;
# PYTHON picks the interpreter that has ssmbench installed.
set -euo pipefail
cd "$(dirname "$0")/.."
shopt -s nullglob

results=(leaderboards/*.parquet)
if (( ${#results[@]} == 0 )); then
  echo "check_leaderboard: no leaderboards/*.parquet yet; nothing to check"
  exit 0
fi
for parquet in "${results[@]}"; do
  name=$(basename "$parquet" .parquet)
  markdown=leaderboards/$name.md
  [[ $name == results ]] && markdown=leaderboards/README.md
  "${PYTHON:-python}" -m ssmbench leaderboard publish --leaderboard "$parquet" --out "$markdown" --check
  "${PYTHON:-python}" -m ssmbench leaderboard audit --leaderboard "$parquet"
done
