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
  "$venv/bin/python" -m pip install -q --disable-pip-version-check -c "$root/constraints.txt" -e "$root[capture,view,dev]"
  echo "$want" > "$stamp"
fi
# The viewer's browser tests drive Debian's chromium (Playwright's own browser download is
# not used): install it through apt when running as root and it is missing.
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing chromium for the viewer's browser tests (apt-get) ..." >&2
  apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >&2 \
    || echo "warning: could not install chromium; the viewer's browser tests will not run" >&2
fi
export PATH="$venv/bin:$PATH"
# ncdump (netcdf-bin, ~7 MB) lets the format tests print a capture's header with netCDF-C's
# own tool; installed only where apt works as root, and the test skips without it.
if ! command -v ncdump >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  apt-get install -y -q netcdf-bin >/dev/null 2>&1 || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q netcdf-bin >/dev/null 2>&1; } || true
fi
