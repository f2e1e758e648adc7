#!/usr/bin/env bash
# Fails (exit 1) when the committed leaderboards/README.md is not what results.parquet renders to,
# so a PR that adds results also carries the regenerated markdown. Called by .ci/run and by
# ci/publish-leaderboard.yml; PYTHON picks the interpreter that has ssmbench installed.
set -euo pipefail
cd "$(dirname "$0")/.."

results=leaderboards/results.parquet
if [[ ! -f $results ]]; then
  echo "check_leaderboard: no $results yet; nothing to check"
  exit 0
fi
exec "${PYTHON:-python}" -m ssmbench leaderboard publish --path "$results" --out leaderboards/README.md --check
