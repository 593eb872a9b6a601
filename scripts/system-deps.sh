#!/usr/bin/env bash
# Installs the Debian packages some tests drive: headless Chromium (dashboard test)
# and docker-compose (validates docker-compose.yml; no Docker engine needed).
set -u
need=()
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v docker-compose >/dev/null 2>&1 || need+=(docker-compose)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "note: ${need[*]} missing and cannot be installed here (needs root and apt-get); tests that need them will be skipped" >&2
  exit 0
fi
echo "installing ${need[*]} (Debian packages)…" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null && apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null \
  || echo "warning: could not install ${need[*]}; tests that need them will be skipped" >&2
exit 0
