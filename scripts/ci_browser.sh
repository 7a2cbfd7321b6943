#!/usr/bin/env bash
# A headless browser for tests/export/test_browser.py (selenium drives Debian's chromium through chromedriver; the
# test starts its own dashboard). Installs Debian's packages only when either binary is missing; quiet, safe to run
# again, and never fails the run: where they cannot be installed the browser test skips and says why.
set -uo pipefail

have_browser() {
    { command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; } &&
        command -v chromedriver >/dev/null 2>&1
}

if have_browser; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "ci_browser: no chromium/chromedriver and no apt-get; the browser test will be skipped" >&2
    exit 0
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then
    if ! command -v sudo >/dev/null 2>&1; then
        echo "ci_browser: no chromium/chromedriver and not root (no sudo); the browser test will be skipped" >&2
        exit 0
    fi
    sudo="sudo -n"
fi
export DEBIAN_FRONTEND=noninteractive
log=$(mktemp)
# apt's chatter is shown only when it fails, and a failure is a warning: the test skips with the reason.
if ! { $sudo apt-get update -qq &&
        $sudo apt-get install -y -qq --no-install-recommends chromium chromium-driver; } >"$log" 2>&1; then
    tail -n 20 "$log" >&2
    rm -f "$log"
    echo "ci_browser: installing chromium chromium-driver failed; the browser test will be skipped" >&2
    exit 0
fi
rm -f "$log"
if ! have_browser; then
    echo "ci_browser: chromium or chromedriver still missing; the browser test will be skipped" >&2
fi
exit 0
