#!/usr/bin/env bash
# Finishes the tiny test rootfs inside mmdebstrap (customize hook), after one-context (the package built
# from upstream source, installed with --include) is in: its network service set up as for the appliance
# images (images/provision/lib/distro.sh, distro_one_context_network), SSH host key made at first boot
# (ed25519 only: fast, and no two VMs share a key), no host leftovers, no timers that phone home.
#
# Usage: testimage-customize.sh ROOTFS DISTRO_SH
set -euo pipefail

root=${1:?usage: testimage-customize.sh ROOTFS DISTRO_SH}
distro=${2:?usage: testimage-customize.sh ROOTFS DISTRO_SH}

# shellcheck disable=SC2016  # a dpkg-query format, not a shell expansion
if ! chroot "${root}" dpkg-query -W -f '${Status}\n' one-context | grep -q 'install ok installed'; then
    echo "testimage-customize.sh: one-context is not installed in ${root}" >&2
    exit 1
fi
install -m 0644 "${distro}" "${root}/run/fl-distro.sh"
chroot "${root}" env FL_OS=debian12 FL_BUILD_TARGET=chroot bash -c \
    '. /run/fl-distro.sh && distro_one_context_network'
rm -f "${root}/run/fl-distro.sh"

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
