#!/usr/bin/env bash
# A headless browser for tests/export/test_browser.py (selenium drives Debian's chromium through chromedriver; the
# test starts its own dashboard). Installs Debian's packages only when either binary is missing; quiet and safe to run
# again. Exits non-zero when the binaries are missing and cannot be installed: CI (.ci/run) stops there rather than
# pass with the browser test skipped. scripts/test.sh goes on with a warning outside CI, where the test skips.
set -uo pipefail

have_browser() {
    { command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; } &&
        command -v chromedriver >/dev/null 2>&1
}

fail() {
    echo "ci_browser: $*" >&2
    exit 1
}

if have_browser; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    fail "no chromium/chromedriver and no apt-get to install them"
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || fail "no chromium/chromedriver and not root (no sudo) to install them"
    sudo="sudo -n"
fi
export DEBIAN_FRONTEND=noninteractive
log=$(mktemp)
# apt's chatter is shown only when it fails.
if ! { $sudo apt-get update -qq &&
        $sudo apt-get install -y -qq --no-install-recommends chromium chromium-driver; } >"$log" 2>&1; then
    tail -n 20 "$log" >&2
    rm -f "$log"
    fail "installing chromium chromium-driver failed"
fi
rm -f "$log"
have_browser || fail "chromium or chromedriver still missing after installing chromium chromium-driver"
exit 0
