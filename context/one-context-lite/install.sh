#!/usr/bin/env bash
# Install one-context-lite into a root filesystem and enable its units (no running systemd needed).
#
# Usage: install.sh DESTDIR        (DESTDIR=/ installs into the running system)
#
# Puts /usr/sbin/one-contextd, /usr/lib/one-context-lite/functions, the /etc/one-context.d scripts and the
# systemd units in place. Scripts already in /etc/one-context.d (an appliance's net-90 hook) are kept.
set -euo pipefail

source_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
destination=${1:?usage: install.sh DESTDIR}
if [ ! -d "${destination}" ]; then
    echo "install.sh: ${destination} is not a directory" >&2
    exit 2
fi
for tool in curl ip flock; do
    if ! PATH="${destination}/usr/sbin:${destination}/usr/bin:${destination}/sbin:${destination}/bin" \
        command -v "${tool}" >/dev/null; then
        echo "install.sh: warning: ${tool} not found in ${destination} (one-context-lite needs it)" >&2
    fi
done

unit_dir="${destination}/usr/lib/systemd/system"
install -D -m 0755 "${source_dir}/usr/sbin/one-contextd" "${destination}/usr/sbin/one-contextd"
install -D -m 0644 "${source_dir}/usr/lib/one-context-lite/functions" \
    "${destination}/usr/lib/one-context-lite/functions"
install -d -m 0755 "${destination}/etc/one-context.d" "${unit_dir}"
for script in "${source_dir}"/etc/one-context.d/*; do
    install -m 0755 "${script}" "${destination}/etc/one-context.d/"
done
for unit in "${source_dir}"/usr/lib/systemd/system/*; do
    install -m 0644 "${unit}" "${unit_dir}/"
done

enable() { # enable UNIT TARGET: what "systemctl enable" does for WantedBy=TARGET
    install -d -m 0755 "${destination}/etc/systemd/system/$2.wants"
    ln -sfn "/usr/lib/systemd/system/$1" "${destination}/etc/systemd/system/$2.wants/$1"
}
enable one-context-local.service multi-user.target
enable one-context.service multi-user.target
enable one-context-reconfigure.path multi-user.target
enable one-context-reconfigure.timer timers.target

install -d -m 0755 "${destination}/usr/share/one-context-lite"
(cd "${source_dir}" && find usr etc -type f -print0 | sort -z | xargs -0 sha256sum) \
    >"${destination}/usr/share/one-context-lite/files.sha256"
echo "one-context-lite installed into ${destination}"
