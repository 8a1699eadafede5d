#!/usr/bin/env bash
# SSH: keys only (one-context installs the user's key from the context), host keys made at first boot
# (none are baked into the image), only ed25519 and ECDSA host keys (quick to make under emulation).
set -euo pipefail
FL_PROVISION_STEP=60-ssh
# shellcheck source-path=SCRIPTDIR source=lib/distro.sh
. "${FL_PROVISION_DIR:-$(dirname "$0")}/lib/distro.sh"

distro_sshd_dropin "# Flower appliance (provisioning step 60-ssh)
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
X11Forwarding no
HostKey /etc/ssh/ssh_host_ed25519_key
HostKey /etc/ssh/ssh_host_ecdsa_key"

sshd_unit=$(distro_sshd_unit)
if ! distro_regenerates_host_keys; then
    cat >/etc/systemd/system/flower-ssh-hostkeys.service <<UNIT
[Unit]
Description=Generate the SSH host keys of this instance (the image has none)
ConditionPathExists=!/etc/ssh/ssh_host_ed25519_key
Before=${sshd_unit} ssh.socket

[Service]
Type=oneshot
ExecStart=/usr/bin/ssh-keygen -q -t ed25519 -N "" -f /etc/ssh/ssh_host_ed25519_key
ExecStart=/usr/bin/ssh-keygen -q -t ecdsa -b 384 -N "" -f /etc/ssh/ssh_host_ecdsa_key

[Install]
WantedBy=${sshd_unit} ssh.socket
UNIT
    distro_enable flower-ssh-hostkeys.service
fi
distro_enable "${sshd_unit}"
