#!/usr/bin/env bash
# Base packages of both appliances, from the distribution, with the system brought up to date. Nothing here
# depends on the role, so a SuperLink and a SuperNode share this layer (factory/images/layers.py); the
# SuperLink's own packages come in 50-appliance.sh.
set -euo pipefail
FL_PROVISION_STEP=10-base
# shellcheck source-path=SCRIPTDIR source=lib/distro.sh
. "$(dirname "$0")/lib/distro.sh"

distro_block_service_starts
distro_refresh
distro_upgrade

distro_install python ca-certificates curl jq openssl iproute2 util-linux openssh-server sudo
