#!/usr/bin/env bash
# Tools the test suite uses besides Python packages: headless Chromium for the live-page test.
# Installed from Debian's packages when missing and this runs as root with apt-get (CI, containers); elsewhere
# the test says it was skipped and why. Safe to run again.
set -uo pipefail
if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "test-tools: installing chromium (headless browser for the live-page test)" >&2
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium) \
    >/dev/null 2>&1 || echo "test-tools: could not install chromium; the live-page browser test will be skipped" >&2
else
  echo "test-tools: chromium not found; the live-page browser test will be skipped (apt-get install chromium)" >&2
fi
exit 0
