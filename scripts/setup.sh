#!/usr/bin/env bash
# Idempotent set-up for a fresh Debian 12 machine: Debian packages, then the project virtualenv (.venv).
# Both README commands call this first. Re-running it is fast when nothing changed.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages the factory, the local builds and the test cloud use.
DEBIAN_PACKAGES=(
  packer qemu-system-x86 qemu-utils mmdebstrap xorriso systemd-container e2fsprogs fdisk extlinux
  syslinux-common iproute2 nftables sqlite3 openssh-client openssh-server openssl shellcheck ca-certificates
  jq curl prometheus
  ruby ruby-xmlrpc ruby-nokogiri ruby-activesupport ruby-parse-cron ruby-ipaddress ruby-treetop
)

missing=()
for package in "${DEBIAN_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if ((${#missing[@]})); then
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup: missing Debian packages (run as root to install): ${missing[*]}" >&2
    exit 1
  fi
  echo "==> installing Debian packages: ${missing[*]}" >&2
  apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
fi

# The project virtualenv, rebuilt when pyproject.toml changes.
stamp=".venv/.pyproject.sha256"
wanted=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -x .venv/bin/python ] || [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]; then
  echo "==> preparing .venv (pinned dependencies from pyproject.toml)" >&2
  python3.11 -m venv .venv 2>/dev/null || python3 -m venv .venv
  if ! .venv/bin/pip install --quiet --disable-pip-version-check -e '.[test]' >.venv/pip.log 2>&1; then
    cat .venv/pip.log >&2
    exit 1
  fi
  .venv/bin/python -c 'import factory, yaml, hcl2, pyone, paramiko, lxml' >/dev/null
  echo "$wanted" >"$stamp"
fi

# Upstream files the tests and local builds read (hostkit/upstream.py): $ONE_UPSTREAM_DIR, or ../shared/upstream
# where it exists; else the GitHub archives of the commits pinned in hostkit/upstream-pins.json, fetched into
# .cache/upstream and taken only when their files hash to the pinned sha256. Without them the set-up goes on:
# the tests that need them fail with one message saying how to get them.
if ! .venv/bin/python -m hostkit.upstream fetch; then
  echo "setup: upstream files not fetched (see above); the tests that need them will say how to get them" >&2
fi
