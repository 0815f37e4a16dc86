#!/usr/bin/env bash
# Creates (once) and refreshes the local virtual environment .venv with everything the
# demo and the tests need. Sourced by scripts/demo and scripts/test.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
py="${PYTHON:-python3}"
if [ ! -x "$venv/bin/python" ]; then
  "$py" -m venv "$venv"
fi
# Reinstall only when the project's requirements change.
stamp="$venv/.ovi-attn-installed"
want="$(cat "$root/pyproject.toml" "$root/constraints.txt" | sha256sum | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  "$venv/bin/python" -m pip install -q --disable-pip-version-check -c "$root/constraints.txt" -e "$root[capture,dev]"
  echo "$want" > "$stamp"
fi
export PATH="$venv/bin:$PATH"
