#!/usr/bin/env bash
# Image hygiene: no SSH host keys, empty machine-id, no package caches, logs, temporary files or shell
# history; edge images also drop documentation.
set -euo pipefail
FL_PROVISION_STEP=90-cleanup
# shellcheck source-path=SCRIPTDIR source=lib/distro.sh
. "$(dirname "$0")/lib/distro.sh"

distro_allow_service_starts
distro_cleanup
# Build-time trust that a local base image may carry (factory/images/localbuild.py, add_build_trust).
rm -rf /etc/fl-build
if [[ -f /etc/environment ]]; then
    sed -i -e '/^# fl-build: /d' -e '/^PIP_CERT=\/etc\/fl-build\//d' /etc/environment
fi
rm -f /etc/ssh/ssh_host_*
: >/etc/machine-id
rm -f /var/lib/dbus/machine-id
rm -rf /root/.cache /root/.bash_history /root/.wget-hsts /home/*/.bash_history /var/cache/pip
rm -rf /var/lib/flower/.cache /var/lib/one-appliance-build 2>/dev/null || true
if [[ "${FL_PROFILE:-standard}" == edge ]]; then
    rm -rf /usr/share/doc/* /usr/share/man/* /usr/share/info/*
fi
find /var/log -type f -exec truncate -s 0 {} +
rm -rf /var/log/journal/* 2>/dev/null || true
# Temporary files, but not the build's own: Packer runs the scripts from /tmp (script_*) and keeps the
# payload in /var/tmp/fl-payload until sysprep.sh, which removes it last.
find /tmp /var/tmp -mindepth 1 -maxdepth 1 ! -name 'script_*' ! -name 'fl-*' ! -name 'packer-*' \
    -exec rm -rf {} + 2>/dev/null || true
