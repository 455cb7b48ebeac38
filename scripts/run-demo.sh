#!/usr/bin/env bash
# The main job on embedded defaults (called by `make run`):
# demo data -> validate -> features -> train -> promote -> serve on 127.0.0.1:8000.
# Every stage must succeed: the first that fails stops the job with its exit code.
set -euo pipefail
cd "$(dirname "$0")/.."
SCF=.venv/bin/scf-risk
DEMO=${SCF_RISK_DEMO_DIR:-data/demo}
PANEL=${SCF_RISK_DEMO_PANEL:-data/demo-panel.parquet}

stage() { printf '\n== %s\n' "$*"; }

stage "1/6 demo data in $DEMO"
if ls "$DEMO"/enterprises.* >/dev/null 2>&1; then
  echo "using the existing dataset in $DEMO"
else
  "$SCF" generate --out "$DEMO" --smes 2000 --cores 20 --months 60 --seed 1
fi

stage "2/6 validate"
"$SCF" validate "$DEMO"

stage "3/6 features -> $PANEL"
"$SCF" features --data "$DEMO" --out "$PANEL"

stage "4/6 train"
"$SCF" train --data "$DEMO" --features "$PANEL"

stage "5/6 promote"
"$SCF" promote

stage "6/6 serve on http://127.0.0.1:8000"
"$SCF" serve --host 127.0.0.1 --port 8000 --demo-data "$DEMO"
