#!/usr/bin/env bash
# Runs one container of the test cloud's container driver and keeps it alive across guest reboots.
#
# Usage: nspawn-supervisor.sh STATE_PREFIX NETNS systemd-nspawn ARG...
#
# Each start enters the VM's network namespace NETNS and a private mount namespace in which /sys is a sysfs
# of that network namespace (with the host's cgroup hierarchies put back under /sys/fs/cgroup): nspawn
# hands /sys on to the guest, whose /sys/class/net must show its own eth<n>, not the host's interfaces.
#
# systemd-nspawn exits with status 133 when the guest reboots; the supervisor then starts it again on the same
# overlay and network namespace, as a VM reboot keeps its disks and NICs. The driver asks for a restart after a
# hard reset by creating STATE_PREFIX.restart before it kills the guest. The final exit status is written to
# STATE_PREFIX.exit (0 = the guest powered off, anything else = it failed or was killed).
set -euo pipefail

if [ "${1:-}" = --inner ]; then
    # Inside the VM's network namespace and a private mount namespace: re-mount /sys, then run nspawn.
    keep=$2
    shift 2
    mkdir -p "${keep}"
    mount --rbind /sys/fs/cgroup "${keep}"
    mount -t sysfs sysfs /sys
    mount --rbind "${keep}" /sys/fs/cgroup
    umount --lazy "${keep}"
    exec "$@"
fi

prefix=$1
netns=$2
shift 2
rm -f "${prefix}.exit"

while :; do
    echo "--- container start: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    status=0
    nsenter --net="/run/netns/${netns}" unshare --mount --propagation slave -- \
        "${BASH}" "$0" --inner "${prefix}.cgroup" "$@" || status=$?
    if [ -e "${prefix}.restart" ]; then
        rm -f "${prefix}.restart"
        continue
    fi
    [ "${status}" -eq 133 ] || break
done

rmdir "${prefix}.cgroup" 2>/dev/null || true
echo "${status}" >"${prefix}.exit"
echo "--- container exit: status ${status}"
exit "${status}"
