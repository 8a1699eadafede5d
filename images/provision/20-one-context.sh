#!/usr/bin/env bash
# The OpenNebula guest agent: the one-context package (released, or built from upstream source for the
# local Debian images, where the released one cannot be downloaded).
set -euo pipefail
FL_PROVISION_STEP=20-one-context
# shellcheck source-path=SCRIPTDIR source=lib/distro.sh
. "$(dirname "$0")/lib/distro.sh"

log "installing one-context (${FL_ONE_CONTEXT:-package})"
distro_install_one_context
