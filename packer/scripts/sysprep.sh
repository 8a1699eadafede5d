#!/usr/bin/env bash
# Image hygiene, the last step in the build VM: no SSH host keys (a first-boot unit makes new ones), an
# empty machine-id, empty logs, no build payload, no build key, no package caches; free blocks trimmed
# so that compaction shrinks the image. Then check all of it and fail the build if anything is left.
set -euo pipefail

rm -rf /var/tmp/fl-payload /var/tmp/fl-facts

if command -v cloud-init >/dev/null 2>&1; then
  cloud-init clean --logs --seed || true
fi
if command -v apt-get >/dev/null 2>&1; then
  apt-get clean
fi
if command -v zypper >/dev/null 2>&1; then
  zypper --non-interactive clean --all
fi

# SSH host keys: removed here, generated again on the first boot (ed25519 and ecdsa only: RSA key
# generation is slow on small and emulated machines).
rm -f /etc/ssh/ssh_host_*
keygen=$(command -v ssh-keygen)
cat >/etc/systemd/system/fl-ssh-host-keys.service <<UNIT
[Unit]
Description=Generate SSH host keys on the first boot of the image
ConditionPathExists=!/etc/ssh/ssh_host_ed25519_key
Before=ssh.service sshd.service
DefaultDependencies=no
After=local-fs.target

[Service]
Type=oneshot
ExecStart=$keygen -q -t ed25519 -N "" -f /etc/ssh/ssh_host_ed25519_key
ExecStart=$keygen -q -t ecdsa -N "" -f /etc/ssh/ssh_host_ecdsa_key

[Install]
WantedBy=multi-user.target
UNIT
systemctl enable fl-ssh-host-keys.service

# machine-id: empty, so that systemd gives every VM its own on first boot.
truncate -s 0 /etc/machine-id
if [ -e /var/lib/dbus/machine-id ] && [ ! -L /var/lib/dbus/machine-id ]; then
  rm -f /var/lib/dbus/machine-id
  ln -s /etc/machine-id /var/lib/dbus/machine-id
fi
rm -f /var/lib/systemd/random-seed

# Logs and shell history.
if command -v journalctl >/dev/null 2>&1; then
  journalctl --rotate >/dev/null 2>&1 || true
  journalctl --vacuum-time=1s >/dev/null 2>&1 || true
fi
find /var/log -path /var/log/journal -prune -o -type f \( -name '*.gz' -o -name '*.[0-9]' -o -name '*.old' \) \
  -exec rm -f {} +
find /var/log -path /var/log/journal -prune -o -type f -exec truncate -s 0 {} +
rm -f /root/.bash_history /root/.python_history /root/.wget-hsts
rm -rf /root/.cache

# The build key goes last: Packer's session is already open.
rm -f /root/.ssh/authorized_keys

if command -v fstrim >/dev/null 2>&1; then
  fstrim -av || true
fi
sync

# Check.
left=()
compgen -G '/etc/ssh/ssh_host_*' >/dev/null && left+=("SSH host keys in /etc/ssh")
[ -s /etc/machine-id ] && left+=("a machine-id")
[ -e /root/.ssh/authorized_keys ] && left+=("root's authorized_keys")
[ -e /var/tmp/fl-payload ] && left+=("the build payload")
# A daemon may log a line after the truncation; anything bigger is a leftover.
logs=$(find /var/log -path /var/log/journal -prune -o -type f -size +64k -print | head -n 5)
[ -n "$logs" ] && left+=("logs: ${logs//$'\n'/ }")
if ((${#left[@]})); then
  printf 'image hygiene failed, left behind:\n' >&2
  printf '  - %s\n' "${left[@]}" >&2
  exit 1
fi
echo "image hygiene: ok"
