#!/usr/bin/env bash
# GPU variants: the NVIDIA driver (CPU variants: nothing to do).
set -euo pipefail
FL_PROVISION_STEP=30-nvidia
# shellcheck source-path=SCRIPTDIR source=lib/distro.sh
. "$(dirname "$0")/lib/distro.sh"

if [[ "${FL_ACCEL:-cpu}" != gpu ]]; then
    log "CPU variant: no GPU driver"
    exit 0
fi
log "installing the NVIDIA driver ${FL_NVIDIA_DRIVER:-?} (CUDA ${FL_CUDA_VERSION:-?} comes with the framework wheels)"
distro_install_nvidia
distro_update_boot
