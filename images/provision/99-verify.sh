#!/usr/bin/env bash
# Checks that fail the build: the appliance is installed as designed and the image is clean.
set -euo pipefail
FL_PROVISION_STEP=99-verify
# shellcheck source-path=SCRIPTDIR source=lib/distro.sh
. "$(dirname "$0")/lib/distro.sh"

failures=()
check() {
    local description=$1
    shift
    if ! "$@" >/dev/null 2>&1; then
        failures+=("${description}")
    fi
}
not() { ! "$@"; }

venv=/opt/flower/venv
check "flwr ${FL_FLOWER_VERSION} in ${venv}" \
    "${venv}/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('flwr') != '${FL_FLOWER_VERSION}')"
check "flower-${FL_ROLE} in ${venv}/bin" test -x "${venv}/bin/flower-${FL_ROLE}"
check "${venv} owned by root" test "$(stat -c %U "${venv}/bin/python")" = root
check "${venv} not writable by flower" not setpriv --reuid=flower --regid=flower --init-groups test -w "${venv}/bin"
check "user flower exists" id -u flower
check "user flower is not root" test "$(id -u flower)" -ne 0
check "/etc/one-appliance/service is executable" test -x /etc/one-appliance/service
check "role hooks /etc/one-appliance/roles/${FL_ROLE}.sh" test -r "/etc/one-appliance/roles/${FL_ROLE}.sh"
check "configuration templates in /etc/one-appliance/templates" test -r /etc/one-appliance/templates/flower.env
check "install stage succeeded" grep -qx install_success /etc/one-appliance/status
# shellcheck disable=SC2016  # expanded by the inner shell
check "parameter defaults load" bash -c '. /etc/one-appliance/flower/params.sh && test -n "${FL_PARAMS}"'
check "one-context package installed" bash -c 'dpkg-query -W one-context || rpm -q one-context'
check "one-context units enabled" test -L /etc/systemd/system/multi-user.target.wants/one-context.service
if [[ "${FL_OS}" == debian12 ]]; then
    check "systemd-networkd enabled for one-context" \
        test -L /etc/systemd/system/multi-user.target.wants/systemd-networkd.service
    check "no networkd D-Bus activation alias (a 25 s wait at boot)" \
        not test -e /etc/systemd/system/dbus-org.freedesktop.network1.service
fi
check "net-90-service-appliance hook" test -x /etc/one-context.d/net-90-service-appliance
check "net-99-report-ready hook" test -x /etc/one-context.d/net-99-report-ready
check "flower-${FL_ROLE}.service installed" test -f "/etc/systemd/system/flower-${FL_ROLE}.service"
check "flower-metrics.service installed" test -f /etc/systemd/system/flower-metrics.service
check "flower-nodecount.service installed" test -f /etc/systemd/system/flower-nodecount.service
check "prometheus-client in ${venv}" "${venv}/bin/python" -c "import prometheus_client"
check "flower-metrics runs with ${venv}" "${venv}/bin/python" /etc/one-appliance/bin/flower-metrics --help
if [[ "${FL_ROLE}" == superlink ]]; then
    check "nginx for the Fleet proxy" test -x /usr/sbin/nginx
    check "sqlite3 for database backups" command -v sqlite3
fi
check "no SSH host keys" not compgen -G '/etc/ssh/ssh_host_*'
check "empty machine-id" not test -s /etc/machine-id
check "no root shell history" not test -e /root/.bash_history
check "no policy-rc.d left" not test -e /usr/sbin/policy-rc.d
check "no build-time trust left" not test -e /etc/fl-build
check "no build-time PIP_CERT left" not grep -q fl-build /etc/environment

if ((${#failures[@]})); then
    printf 'image check failed: %s\n' "${failures[@]}" >&2
    exit 1
fi
log "image checks passed"
