#!/usr/bin/env bash
# Make a headless-capable Chromium available for tests/test_report.py (the Snakemake report is
# checked in a real browser). Run by .ci/run before `make test`; idempotent: does nothing when a
# Chromium binary already answers `--version`.
#
#   NHT_CHROMIUM   use this browser binary instead (checked, never installed)
set -euo pipefail

log() { echo "[chromium.sh] $*"; }

for candidate in "${NHT_CHROMIUM:-}" chromium chromium-browser; do
  [ -n "$candidate" ] || continue
  if command -v "$candidate" >/dev/null 2>&1 && "$candidate" --version >/dev/null 2>&1; then
    log "found: $("$candidate" --version 2>/dev/null | head -1)"
    exit 0
  fi
done

if [ -n "${NHT_CHROMIUM:-}" ]; then
  log "ERROR: NHT_CHROMIUM=$NHT_CHROMIUM does not run" >&2
  exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
  log "ERROR: no Chromium and no apt-get; install Chromium and/or set NHT_CHROMIUM" >&2
  exit 1
fi
SUDO=""
if [ "$(id -u)" != 0 ]; then
  command -v sudo >/dev/null 2>&1 || { log "ERROR: need root (or sudo) to apt-get install chromium" >&2; exit 1; }
  SUDO="sudo"
fi
log "installing the Debian package 'chromium'"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
chromium --version
