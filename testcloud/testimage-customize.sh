#!/usr/bin/env bash
# Finishes the tiny test rootfs inside mmdebstrap (customize hook): one-context-lite, SSH host key made at
# first boot (ed25519 only: fast, and no two VMs share a key), no host leftovers, no timers that phone home.
#
# Usage: testimage-customize.sh ROOTFS ONE_CONTEXT_LITE_DIR
set -euo pipefail

root=${1:?usage: testimage-customize.sh ROOTFS ONE_CONTEXT_LITE_DIR}
lite=${2:?usage: testimage-customize.sh ROOTFS ONE_CONTEXT_LITE_DIR}

"${lite}/install.sh" "${root}"

# Host leftovers: identity, resolver, SSH host keys.
echo localhost >"${root}/etc/hostname"
: >"${root}/etc/resolv.conf"
: >"${root}/etc/machine-id"
rm -f "${root}"/etc/ssh/ssh_host_*

mkdir -p "${root}/etc/systemd/system/ssh.service.d" "${root}/etc/ssh/sshd_config.d"
cat >"${root}/etc/systemd/system/ssh.service.d/host-key.conf" <<'UNIT'
[Service]
ExecStartPre=
ExecStartPre=/bin/sh -c 'test -e /etc/ssh/ssh_host_ed25519_key || ssh-keygen -q -t ed25519 -N "" -f /etc/ssh/ssh_host_ed25519_key'
ExecStartPre=/usr/sbin/sshd -t
UNIT
cat >"${root}/etc/ssh/sshd_config.d/test-image.conf" <<'SSHD'
HostKey /etc/ssh/ssh_host_ed25519_key
PermitRootLogin prohibit-password
PasswordAuthentication no
UseDNS no
SSHD

# Nothing in a test VM reaches out: no apt timers.
for unit in apt-daily.timer apt-daily-upgrade.timer; do
    ln -sfn /dev/null "${root}/etc/systemd/system/${unit}"
done
