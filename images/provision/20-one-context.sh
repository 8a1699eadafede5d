#!/usr/bin/env bash
# The OpenNebula guest agent: the real one-context package (Ubuntu, openSUSE) or the compatible
# one-context-lite (local Debian images, where the package cannot be downloaded).
set -euo pipefail
FL_PROVISION_STEP=20-one-context
# shellcheck source-path=SCRIPTDIR source=lib/distro.sh
. "$(dirname "$0")/lib/distro.sh"

log "installing one-context (${FL_ONE_CONTEXT:-package})"
distro_install_one_context
