#!/usr/bin/env bash
# System packages the tests use, installed only when missing (Debian): PostgreSQL for the team-services
# tests (tests/test_services.py) and Chromium for the report-in-a-browser test. `make test` runs this first.
set -euo pipefail
missing=()
compgen -G "/usr/lib/postgresql/*/bin/initdb" > /dev/null || missing+=(postgresql)
command -v chromium > /dev/null || missing+=(chromium)
[ ${#missing[@]} -eq 0 ] && exit 0
sudo=""
if [ "$(id -u)" -ne 0 ]; then
    if ! command -v sudo > /dev/null; then
        echo "sysdeps: ${missing[*]} missing and no root or sudo: their tests will be skipped" >&2
        exit 0
    fi
    sudo="sudo"
fi
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
