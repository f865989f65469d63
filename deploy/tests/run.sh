#!/usr/bin/env bash
# Offline verification of deploy/ (../shared/design/k8s-verification.md): installs the
# pinned tools a fresh machine lacks into target/ (gitignored), then runs every layer
# over every overlay and prints `NAME: N passed, M failed` per layer. Exit 1 on any failure.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
tests=deploy/tests
venv=target/deploy-venv
checkov_venv=target/deploy-venv-checkov
tools=target/deploy-tools
# Debian 12's prometheus package: promtool 2.42, as the verification guide pins.
prometheus_deb_version="2.42.0+ds-5+deb12u1"

say() { printf '%s\n' "$*" >&2; }

# A venv is rebuilt only when its lock file changes.
ensure_venv() {
    local dir=$1 lock=$2 stamp="$1/.lock.sha256"
    local want
    want=$(sha256sum "$lock" | cut -d' ' -f1)
    if [[ -x $dir/bin/python && -f $stamp && $(cat "$stamp") == "$want" ]]; then
        return
    fi
    say "installing $(basename "$dir") from $lock"
    rm -rf "$dir"
    python3 -m venv "$dir"
    "$dir/bin/pip" install --quiet --disable-pip-version-check --no-deps --require-virtualenv -r "$lock"
    echo "$want" >"$stamp"
}

ensure_promtool() {
    if command -v promtool >/dev/null; then
        command -v promtool
        return
    fi
    if [[ ! -x $tools/promtool ]]; then
        say "installing promtool from Debian's prometheus $prometheus_deb_version (extracted, no service started)"
        mkdir -p "$tools"
        local tmp
        tmp=$(mktemp -d)
        chmod 755 "$tmp" # apt downloads as the _apt user
        # Without package lists apt-get download finds nothing.
        if ! apt-cache show "prometheus=$prometheus_deb_version" >/dev/null 2>&1; then
            apt-get update -qq >&2
        fi
        (cd "$tmp" && apt-get download -qq "prometheus=$prometheus_deb_version" >&2)
        dpkg-deb -x "$tmp"/prometheus_*.deb "$tmp/x"
        cp "$tmp/x/usr/bin/promtool" "$tools/promtool"
        rm -rf "$tmp"
    fi
    echo "$root/$tools/promtool"
}

command -v python3 >/dev/null || { say "python3 is required"; exit 1; }
command -v kubectl >/dev/null || { say "kubectl (with kustomize v5) is required"; exit 1; }
ensure_venv "$venv" "$tests/requirements.txt"
ensure_venv "$checkov_venv" "$tests/requirements-checkov.txt"
PROMTOOL=$(ensure_promtool)
export PROMTOOL CHECKOV="$root/$checkov_venv/bin/checkov"

exec "$venv/bin/python" "$tests/verify.py"
