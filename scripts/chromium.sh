#!/usr/bin/env bash
# Install the Debian `chromium` package when `chromium` is missing (`make test-setup` runs this).
# The explorer's browser test (tests/test_explorer_browser.py) drives it headless through
# Playwright for Python, launched with `executable_path`: Playwright's own browser downloads
# are never used (the machines that run the tests are offline).
set -euo pipefail

if command -v chromium >/dev/null 2>&1; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "chromium is missing and apt-get is not available: install Chromium with your" \
        "package manager and set STARSREC_CHROMIUM to its executable" >&2
    exit 1
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then
    sudo="sudo"
fi
echo "installing chromium (Debian package) for the explorer browser test"
$sudo apt-get update -qq
$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium
