#!/usr/bin/env bash
# Base packages of both appliances, from the distribution, with the system brought up to date.
# The SuperLink also needs nginx (Fleet proxy) and sqlite3 (state database backups).
set -euo pipefail
FL_PROVISION_STEP=10-base
# shellcheck source-path=SCRIPTDIR source=lib/distro.sh
. "$(dirname "$0")/lib/distro.sh"

distro_block_service_starts
distro_refresh
distro_upgrade

packages=(python ca-certificates curl jq openssl iproute2 util-linux openssh-server sudo)
if [[ "${FL_ROLE:?}" == superlink ]]; then
    packages+=(nginx sqlite3)
fi
distro_install "${packages[@]}"
