# shellcheck shell=bash
# Every difference between the distributions the appliances are built on lives here: package manager
# and package names, the Python for Flower, the one-context package, the NVIDIA driver, grub, sshd,
# cleanup. The numbered provisioning scripts only call these functions.
#
#   FL_OS            ubuntu2404 | opensuse156 | debian12
#   FL_BUILD_TARGET  packer (a booted VM with systemd) | chroot (no running systemd: enable, don't start)

case "${FL_OS:?FL_OS is not set}" in
    debian12 | ubuntu2404) DISTRO_FAMILY=debian ;;
    opensuse156) DISTRO_FAMILY=suse ;;
    *)
        echo "distro.sh: unsupported FL_OS '${FL_OS}' (known: debian12, ubuntu2404, opensuse156)" >&2
        exit 2
        ;;
esac
export DISTRO_FAMILY
: "${FL_BUILD_TARGET:=packer}"
if [[ "${DISTRO_FAMILY}" == debian ]]; then
    export DEBIAN_FRONTEND=noninteractive
fi

log() {
    printf '==> [%s] %s\n' "${FL_PROVISION_STEP:-provision}" "$*" >&2
}

die() {
    printf 'ERROR: [%s] %s\n' "${FL_PROVISION_STEP:-provision}" "$*" >&2
    exit 1
}

# Generic package names -> this distribution's names.
distro_package_names() {
    local name
    for name in "$@"; do
        case "${DISTRO_FAMILY}:${name}" in
            debian:python) printf '%s\n' python3 python3-venv ;;
            suse:python) printf '%s\n' python311 ;;
            debian:ca-certificates) printf '%s\n' ca-certificates ;;
            suse:ca-certificates) printf '%s\n' ca-certificates ca-certificates-mozilla ;;
            debian:openssh-server) printf '%s\n' openssh-server openssh-client ;;
            suse:openssh-server) printf '%s\n' openssh-server openssh-clients ;;
            # The monitoring role (SuperLink images): Prometheus and promtool, and Jinja2 for the
            # distribution's Python that renders monitoring/prometheus/prometheus.yml.j2. Leap ships
            # Prometheus as golang-github-prometheus-prometheus (its unit: prometheus.service).
            suse:prometheus) printf '%s\n' golang-github-prometheus-prometheus ;;
            debian:jinja2) printf '%s\n' python3-jinja2 ;;
            suse:jinja2) printf '%s\n' python311-Jinja2 ;;
            *:*) printf '%s\n' "${name}" ;;
        esac
    done
}

distro_refresh() {
    case "${DISTRO_FAMILY}" in
        debian) apt-get -q update ;;
        suse) zypper --non-interactive --gpg-auto-import-keys refresh ;;
    esac
}

distro_upgrade() {
    case "${DISTRO_FAMILY}" in
        debian)
            apt-get -q -y -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold dist-upgrade
            ;;
        suse) zypper --non-interactive --gpg-auto-import-keys update --no-recommends ;;
    esac
}

# distro_install GENERIC_NAME... (see distro_package_names)
distro_install() {
    local packages
    mapfile -t packages < <(distro_package_names "$@")
    log "installing ${packages[*]}"
    case "${DISTRO_FAMILY}" in
        debian)
            apt-get -q -y --no-install-recommends -o Dpkg::Options::=--force-confdef \
                -o Dpkg::Options::=--force-confold install "${packages[@]}"
            ;;
        suse) zypper --non-interactive --gpg-auto-import-keys install --no-recommends "${packages[@]}" ;;
    esac
}

# Debian-family package scripts start services on install; the image build must not (no systemd in a
# chroot, and nothing should run inside the Packer VM but the provisioning).
distro_block_service_starts() {
    if [[ "${DISTRO_FAMILY}" == debian ]]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 0755 /usr/sbin/policy-rc.d
    fi
}

distro_allow_service_starts() {
    rm -f /usr/sbin/policy-rc.d
}

# The Python interpreter Flower's virtualenv is made from (Flower needs >= 3.11; Leap's python3 is 3.6).
distro_python() {
    case "${DISTRO_FAMILY}" in
        debian) printf '/usr/bin/python3\n' ;;
        suse) printf '/usr/bin/python3.11\n' ;;
    esac
}

# Grafana for the monitoring role, from Grafana's own repository (it is not in Debian's, Ubuntu's or
# Leap's archive), where a build can reach it: Ubuntu and openSUSE images, built with Packer elsewhere
# (validated here, never run). The local Debian images carry Prometheus alone (returns 1, installs
# nothing). Repository and key as grafana.com/docs/grafana/latest/setup-grafana/installation/ gives them.
distro_install_grafana() {
    case "${FL_OS}" in
        debian12)
            log "Grafana: not installed on ${FL_OS} (its repository is not reachable from the local builds)"
            return 1
            ;;
        ubuntu2404)
            distro_install gnupg
            install -d -m 0755 /etc/apt/keyrings
            curl -fsSL https://apt.grafana.com/gpg.key | gpg --dearmor -o /etc/apt/keyrings/grafana.gpg
            printf 'deb [signed-by=/etc/apt/keyrings/grafana.gpg] https://apt.grafana.com stable main\n' \
                >/etc/apt/sources.list.d/grafana.list
            apt-get -q update
            ;;
        opensuse156)
            rpm --import https://rpm.grafana.com/gpg.key
            zypper --non-interactive addrepo --refresh https://rpm.grafana.com grafana
            ;;
    esac
    distro_install grafana
}

distro_nologin_shell() {
    command -v nologin 2>/dev/null || printf '/usr/sbin/nologin\n'
}

# The guest agent: OpenNebula's one-context package, the released one (FL_ONE_CONTEXT=package,
# FL_ONE_CONTEXT_URL) or the same package built from the pinned upstream source by the local builder
# (FL_ONE_CONTEXT=source: hostkit/onecontext.py puts the .deb in ${FL_PAYLOAD}/one-context/). Installed as
# one-apps' packer/<distro>/80-install-context.sh does: the package with its dependencies (apt/zypper run
# its postinst: units enabled, distro network configuration reset), then the network service it drives.
distro_install_one_context() {
    local file=""
    case "${FL_ONE_CONTEXT:-package}" in
        source)
            [[ "${DISTRO_FAMILY}" == debian ]] ||
                die "FL_ONE_CONTEXT=source builds a .deb: Debian family only"
            file=$(compgen -G "${FL_PAYLOAD}/one-context/one-context_*_all.deb" | head -n1 || true)
            if [[ -z "${file}" ]]; then
                # The Packer build of a local image starts from the local base qcow2, which has it already.
                dpkg-query -W -f '${Status}' one-context 2>/dev/null | grep -q 'install ok installed' ||
                    die "FL_ONE_CONTEXT=source but no ${FL_PAYLOAD}/one-context/one-context_*_all.deb"
                log "one-context $(dpkg-query -W -f '${Version}' one-context) is installed already"
            else
                apt-get -q -y --no-install-recommends -o Dpkg::Options::=--force-confdef \
                    -o Dpkg::Options::=--force-confold install "${file}"
            fi
            ;;
        package)
            [[ -n "${FL_ONE_CONTEXT_URL:-}" ]] || die "FL_ONE_CONTEXT=package needs FL_ONE_CONTEXT_URL"
            case "${DISTRO_FAMILY}" in
                debian)
                    file=/tmp/one-context.deb
                    curl -fsSL --retry 3 -o "${file}" "${FL_ONE_CONTEXT_URL}"
                    apt-get -q -y --no-install-recommends install "${file}"
                    if [[ "${FL_OS}" == ubuntu2404 ]]; then
                        # one-context replaces cloud-init (it would fight over the network and SSH keys).
                        apt-get -q -y purge cloud-init || true
                        rm -rf /etc/cloud /var/lib/cloud
                    fi
                    ;;
                suse)
                    file=/tmp/one-context.rpm
                    curl -fsSL --retry 3 -o "${file}" "${FL_ONE_CONTEXT_URL}"
                    zypper --non-interactive --no-gpg-checks install --no-recommends "${file}"
                    zypper --non-interactive remove cloud-init >/dev/null 2>&1 || true
                    ;;
            esac
            rm -f "${file}"
            ;;
        *) die "unknown FL_ONE_CONTEXT '${FL_ONE_CONTEXT}' (package or source)" ;;
    esac
    distro_one_context_network
}

# The network service one-context configures. Debian 12: its loc-10-network tries netplan, networkd,
# ifupdown, NetworkManager in that order and takes systemd-networkd (no netplan here), so networkd must
# run: one-apps' packer/debian/80-install-context.sh enables it for Debian > 11.
#
# Without its D-Bus activation alias: one-context-local.service (Before=network-pre.target) runs
# `networkctl list` (loc-10-network.d/netcfg-networkd, is_networkd_iface_managed); with the alias that
# call activates systemd-networkd.service, which is ordered After=network-pre.target, i.e. after the
# caller: whenever D-Bus is already up at that point the call hangs for sd-bus' 25 s method timeout
# (measured on the SuperLink image: one-context-local 26.8 s with the alias, 1.4 s without). Without
# the alias the activation fails at once (networkd is not running yet: nothing to bring down), and
# networkd still starts with the boot (multi-user.target.wants) and answers networkctl on its bus name
# from then on.
distro_one_context_network() {
    [[ "${FL_OS}" == debian12 ]] || return 0
    systemctl enable systemd-networkd.service
    rm -f /etc/systemd/system/dbus-org.freedesktop.network1.service
}

# NVIDIA driver from NVIDIA's CUDA repositories (the CUDA user-space libraries come with the
# framework's pip wheels). FL_NVIDIA_DRIVER is the driver branch (e.g. 570).
distro_install_nvidia() {
    [[ -n "${FL_NVIDIA_DRIVER:-}" ]] || die "GPU variant without FL_NVIDIA_DRIVER"
    local base=https://developer.download.nvidia.com/compute/cuda/repos
    case "${FL_OS}" in
        debian12 | ubuntu2404)
            curl -fsSL --retry 3 -o /tmp/cuda-keyring.deb "${base}/${FL_OS}/x86_64/cuda-keyring_1.1-1_all.deb"
            apt-get -q -y install /tmp/cuda-keyring.deb
            rm -f /tmp/cuda-keyring.deb
            apt-get -q update
            if [[ "${FL_OS}" == debian12 ]]; then
                distro_install linux-headers-amd64
            else
                distro_install linux-headers-generic
            fi
            apt-get -q -y --no-install-recommends install "cuda-drivers-${FL_NVIDIA_DRIVER}"
            ;;
        opensuse156)
            zypper --non-interactive addrepo --refresh "${base}/opensuse15/x86_64/cuda-opensuse15.repo"
            zypper --non-interactive --gpg-auto-import-keys refresh
            distro_install kernel-default-devel
            zypper --non-interactive --gpg-auto-import-keys install --no-recommends "cuda-drivers-${FL_NVIDIA_DRIVER}"
            ;;
    esac
    # The open-source nouveau driver must not grab the GPU first.
    printf 'blacklist nouveau\noptions nouveau modeset=0\n' >/etc/modprobe.d/blacklist-nouveau.conf
}

# Regenerate the boot configuration (kernel or driver changes). Only for disk images that boot with
# grub (Packer); the local container rootfs and its qcow2 boot without it.
distro_update_boot() {
    [[ "${FL_BUILD_TARGET}" == packer ]] || return 0
    case "${DISTRO_FAMILY}" in
        debian)
            if command -v update-initramfs >/dev/null 2>&1; then update-initramfs -u -k all; fi
            if command -v update-grub >/dev/null 2>&1; then update-grub; fi
            ;;
        suse)
            if command -v dracut >/dev/null 2>&1; then dracut --force --regenerate-all; fi
            if [[ -d /boot/grub2 ]]; then grub2-mkconfig -o /boot/grub2/grub.cfg; fi
            ;;
    esac
}

# sshd: our settings as a drop-in; make sure the main configuration includes the drop-in directory.
distro_sshd_dropin() {
    local content=$1
    install -d -m 0755 /etc/ssh/sshd_config.d
    printf '%s\n' "${content}" >/etc/ssh/sshd_config.d/50-flower-appliance.conf
    chmod 0644 /etc/ssh/sshd_config.d/50-flower-appliance.conf
    if [[ -f /etc/ssh/sshd_config ]] && ! grep -qE '^Include /etc/ssh/sshd_config\.d/\*\.conf' /etc/ssh/sshd_config; then
        sed -i '1i Include /etc/ssh/sshd_config.d/*.conf' /etc/ssh/sshd_config
    fi
}

# The sshd unit name.
distro_sshd_unit() {
    case "${DISTRO_FAMILY}" in
        debian) printf 'ssh.service\n' ;;
        suse) printf 'sshd.service\n' ;;
    esac
}

distro_enable() {
    systemctl enable "$@"
}

distro_cleanup() {
    case "${DISTRO_FAMILY}" in
        debian)
            apt-get -q -y autoremove --purge
            apt-get -q clean
            rm -rf /var/lib/apt/lists/*
            ;;
        suse)
            zypper --non-interactive clean --all
            if command -v purge-kernels >/dev/null 2>&1; then purge-kernels || true; fi
            ;;
    esac
}
