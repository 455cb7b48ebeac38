#!/usr/bin/env bash
# The main job on embedded defaults (called by `make run`):
# demo data -> validate -> features -> train -> promote -> serve on 127.0.0.1:8000.
# A stage whose command is not built yet is reported plainly and the job stops there (exit 0).
set -euo pipefail
cd "$(dirname "$0")/.."
SCF=.venv/bin/scf-risk
DEMO=${SCF_RISK_DEMO_DIR:-data/demo}
PANEL=${SCF_RISK_DEMO_PANEL:-data/demo-panel.parquet}

built() { "$SCF" "$1" --help >/dev/null 2>&1; }
stage() { printf '\n== %s\n' "$*"; }
not_built() { printf '\n== stage "%s" is not built yet: the job stops here.\n' "$1"; exit 0; }

stage "1/6 demo data in $DEMO"
built generate || not_built generate
if ls "$DEMO"/enterprises.* >/dev/null 2>&1; then
  echo "using the existing dataset in $DEMO"
else
  "$SCF" generate --out "$DEMO" --smes 2000 --cores 20 --months 36 --seed 1
fi

stage "2/6 validate"
built validate || not_built validate
"$SCF" validate "$DEMO"

stage "3/6 features -> $PANEL"
built features || not_built features
"$SCF" features --data "$DEMO" --out "$PANEL"

stage "4/6 train"
built train || not_built train
"$SCF" train --data "$DEMO" --features "$PANEL"

stage "5/6 promote"
built promote || not_built promote
"$SCF" promote

stage "6/6 serve on http://127.0.0.1:8000"
built serve || not_built serve
"$SCF" serve --host 127.0.0.1 --port 8000 --demo-data "$DEMO"
