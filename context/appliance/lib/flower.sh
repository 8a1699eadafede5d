# shellcheck shell=bash
# Flower runtime helpers shared by both roles: installed version, version policy, node config, GPU,
# argument files for the systemd units, (re)starting units when their configuration changed.

# The flwr version installed in the appliance's virtualenv (from its dist-info, without importing it).
fl_flower_version() {
    local info
    info=$(find "${FL_VENV}"/lib/python3*/site-packages -maxdepth 1 -name 'flwr-*.dist-info' 2>/dev/null | head -n 1)
    [[ -n "${info}" ]] || return 1
    info=${info##*/flwr-}
    printf '%s\n' "${info%.dist-info}"
}

# major.minor of a version string ("1.42.0" -> "1.42").
fl_major_minor() {
    local version=$1
    [[ "${version}" =~ ^([0-9]+)\.([0-9]+) ]] || return 1
    printf '%s.%s\n' "${BASH_REMATCH[1]}" "${BASH_REMATCH[2]}"
}

# Flower's rule: a SuperNode and a SuperLink work together when major.minor are equal.
# Prints "compatible" or "mismatched"; returns 2 when a version cannot be parsed.
fl_version_compat() {
    local ours theirs
    ours=$(fl_major_minor "$1") || return 2
    theirs=$(fl_major_minor "$2") || return 2
    if [[ "${ours}" == "${theirs}" ]]; then
        printf 'compatible\n'
    else
        printf 'mismatched\n'
    fi
}

# Derive "partition-id=I num-partitions=N" for VM vmid from a OneGate GET /service document: I is the
# VM's place among its role's VMs sorted by VM id, N the role's cardinality (at least the number of VMs
# listed, so that I < N holds while a scale operation is under way).
fl_node_config_from_service() {
    local service_json=$1 vmid=$2
    jq -r --argjson vmid "${vmid}" '
        def node_id: ((.deploy_id // .vm_info.VM.ID) | tonumber);
        [ .SERVICE.roles[]? | select(any(.nodes[]?; node_id == $vmid)) ] | first
        | if . == null then empty else
            ([ .nodes[] | node_id ] | sort) as $ids
            | ($ids | index($vmid)) as $index
            | ([ (.cardinality // 0 | tonumber), ($ids | length) ] | max) as $count
            | "partition-id=\($index) num-partitions=\($count)"
          end
    ' <<<"${service_json}"
}

# Is an NVIDIA GPU visible: nvidia-smi lists one, or the driver exposes one under /proc?
fl_gpu_present() {
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q '^GPU '; then
        return 0
    fi
    compgen -G '/proc/driver/nvidia/gpus/*' >/dev/null
}

fl_gpu_names() {
    if command -v nvidia-smi >/dev/null 2>&1; then
        nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | paste -sd, -
    fi
}

# Write the argument file a unit's wrapper reads (one argument per line). Returns 0 when it changed.
fl_write_args() {
    local path=$1
    shift
    printf '%s\n' "$@" | fl_write_file "${path}" 0644
}

# Mark a unit for restart at bootstrap (its configuration changed in configure).
fl_mark_restart() {
    mkdir -p "${FL_STATE}/run"
    touch "${FL_STATE}/run/restart-$1"
}

# Start a unit, or restart it when its configuration changed since it started. No-op without systemd
# (image builds).
fl_unit_apply() {
    local unit=$1 marker="${FL_STATE}/run/restart-$1"
    fl_systemd_running || return 0
    if systemctl is-active --quiet "${unit}"; then
        if [[ -e "${marker}" ]]; then
            fl_log "restarting ${unit}: its configuration changed"
            systemctl restart "${unit}"
        fi
    else
        systemctl reset-failed "${unit}" >/dev/null 2>&1 || true
        systemctl start "${unit}"
    fi
    rm -f "${marker}"
}

# Wait for an HTTPS (or HTTP) URL to answer 2xx. Extra curl options (e.g. --cacert F) after the URL.
# Every second (the SuperLink's own services on loopback: a try costs nothing, a late one delays READY).
fl_wait_http() {
    local deadline=$1 url=$2
    shift 2
    # shellcheck disable=SC2317  # called through fl_retry_until
    _fl_http_once() { curl --silent --fail --output /dev/null --max-time 5 "$@"; }
    fl_retry_until "${deadline}" 1 _fl_http_once "$@" "${url}"
}

# The last lines a unit wrote to the journal, for failure reasons (one line).
fl_unit_last_error() {
    journalctl -u "$1" -n 30 --no-pager -o cat 2>/dev/null | grep -E 'ERROR|Error|error' | tail -n 1 || true
}
