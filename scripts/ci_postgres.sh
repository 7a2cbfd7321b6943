#!/usr/bin/env bash
# PostgreSQL binaries for the PostgreSQL tests (tests/helpers/pg.py starts a private server on a loopback port; this
# script starts none). Installs Debian's package only when initdb is missing; quiet, and safe to run again. Exits
# non-zero when initdb is missing and cannot be installed: CI (.ci/run) stops there rather than pass with the
# PostgreSQL tests skipped. scripts/test.sh goes on with a warning outside CI, where those tests skip.
set -euo pipefail

have_initdb() {
    command -v initdb >/dev/null 2>&1 || compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null
}

if have_initdb; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "ci_postgres: no initdb and no apt-get to install PostgreSQL" >&2
    exit 1
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then
    sudo="sudo -n"
fi
# Keep the package's own cluster from being started: the tests need only the binaries. policy-rc.d is the Debian
# way to say so; an existing one is left alone.
policy=/usr/sbin/policy-rc.d
added_policy=""
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | $sudo tee "$policy" >/dev/null
    $sudo chmod 755 "$policy"
    added_policy=1
fi
trap '[ -n "$added_policy" ] && $sudo rm -f "$policy"' EXIT
export DEBIAN_FRONTEND=noninteractive
log=$(mktemp)
# apt's chatter (debconf notes included) is shown only when it fails.
if ! { $sudo apt-get update -qq &&
        $sudo apt-get install -y -qq --no-install-recommends postgresql; } >"$log" 2>&1; then
    cat "$log" >&2
    rm -f "$log"
    exit 1
fi
rm -f "$log"
have_initdb || { echo "ci_postgres: postgresql installed but initdb not found" >&2; exit 1; }
