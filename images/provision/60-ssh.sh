#!/usr/bin/env bash
# SSH: keys only (one-context installs the user's key from the context); only the ed25519 and ECDSA host
# keys that the first boot makes (quick to make under emulation; none are baked into the image).
set -euo pipefail
FL_PROVISION_STEP=60-ssh
# shellcheck source-path=SCRIPTDIR source=lib/distro.sh
. "$(dirname "$0")/lib/distro.sh"

distro_sshd_dropin "# Flower appliance (provisioning step 60-ssh)
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
X11Forwarding no
HostKey /etc/ssh/ssh_host_ed25519_key
HostKey /etc/ssh/ssh_host_ecdsa_key"

# Host keys are made at first boot by fl-ssh-host-keys.service, which the image hygiene step
# (packer/scripts/sysprep.sh, run by every build path) installs.
distro_enable "$(distro_sshd_unit)"
