# shellcheck shell=bash
# The metrics side of both roles: flower-metrics (Prometheus exporter, docs/monitoring.md) and
# flower-nodecount (the SuperNode counts OneFlow's elasticity policy reads, docs/elasticity.md).
#
# Access to the metrics: the appliances have no packet filter (no nftables/iptables rules in any role), so
# the exporter itself enforces ONEAPP_FL_METRICS_ALLOW: empty, it listens on 127.0.0.1 only; otherwise it
# listens on every address and disconnects clients outside those CIDRs (and loopback) without an answer.

# shellcheck source=metrics_tls.sh source-path=SCRIPTDIR
. "${FL_APPLIANCE_DIR}/lib/metrics_tls.sh"

# shellcheck disable=SC2034  # used by roles/*.sh
FL_METRICS_UNITS=(flower-metrics.service flower-nodecount.service flower-metrics-cert.service)

# Check ONEAPP_FL_METRICS_* (after fl_params_apply). Fails the stage naming the parameter.
fl_metrics_validate() {
    local role=$1 cidr problem
    [[ "${ONEAPP_FL_METRICS_ENABLED}" == YES ]] || return 0
    problem=$(fl_param_port_problem ONEAPP_FL_METRICS_PORT "${@:2}") || fl_fail "${problem}"
    # The exporter runs unprivileged, without CAP_NET_BIND_SERVICE.
    ((ONEAPP_FL_METRICS_PORT >= 1024)) ||
        fl_fail "ONEAPP_FL_METRICS_PORT: ${ONEAPP_FL_METRICS_PORT} is below 1024: the metrics exporter runs unprivileged and cannot bind it"
    IFS=', ' read -r -a _fl_cidrs <<<"${ONEAPP_FL_METRICS_ALLOW}"
    for cidr in "${_fl_cidrs[@]}"; do
        [[ -z "${cidr}" ]] && continue
        fl_is_cidr "${cidr}" ||
            fl_fail "ONEAPP_FL_METRICS_ALLOW: '$(fl_one_line "${cidr}" 60)' is not an IP address or CIDR"
    done
    if [[ "${ONEAPP_FL_METRICS_TLS:-NO}" == YES ]]; then
        [[ "${ONEAPP_FL_TLS}" == YES ]] ||
            fl_fail "ONEAPP_FL_METRICS_TLS=YES needs ONEAPP_FL_TLS=YES (the certificate comes from the appliance CA)"
    fi
}

# Write /etc/flower/metrics.args (read by flower-metrics.service) and nodecount.env; mark the exporter
# for a restart when its arguments changed.
fl_metrics_configure() {
    local role=$1 args=() cidrs=() cidr
    [[ "${ONEAPP_FL_METRICS_ENABLED}" == YES ]] || return 0
    IFS=', ' read -r -a _fl_cidrs <<<"${ONEAPP_FL_METRICS_ALLOW}"
    for cidr in "${_fl_cidrs[@]}"; do
        [[ -n "${cidr}" ]] && cidrs+=("${cidr}")
    done
    args=("${role}" "--port=${ONEAPP_FL_METRICS_PORT}")
    if ((${#cidrs[@]})); then
        args+=("--allow=$(
            IFS=,
            printf '%s' "${cidrs[*]}"
        )")
    fi
    if [[ "${ONEAPP_FL_METRICS_TLS:-NO}" == YES && "${role}" == superlink ]]; then
        args+=("--tls-cert=${FL_ETC}/tls/server.pem" "--tls-key=${FL_ETC}/tls/server.key")
    elif [[ "${ONEAPP_FL_METRICS_TLS:-NO}" == YES ]]; then
        # issued by the SuperLink through OneGate (flower-metrics-cert, lib/metrics_tls.sh)
        args+=("--tls-cert=${FL_METRICS_TLS_DIR}/node.pem" "--tls-key=${FL_METRICS_TLS_DIR}/node.key")
    fi
    if [[ "${role}" == superlink ]]; then
        args+=("--database=${FL_STATE}/state.db")
    fi
    if [[ "${FL_ACCEL}" != gpu ]]; then
        args+=(--no-gpus)
    fi
    if fl_write_args "${FL_ETC}/metrics.args" "${args[@]}"; then
        fl_mark_restart flower-metrics.service
    fi
    fl_metrics_tls_configure "${role}"
    local database=""
    if [[ "${role}" == superlink && "${ONEAPP_FL_DATABASE}" == persistent ]]; then
        database="${FL_STATE}/state.db"
    fi
    # With a job from context, the SuperNodes it needs are its ONEAPP_FL_MIN_NODES, not the role's cardinality.
    local job_min_nodes=""
    if [[ "${role}" == superlink && -n "${ONEAPP_FL_APP:-}" && "${ONEAPP_FL_MIN_NODES:-}" =~ ^[0-9]+$ ]]; then
        job_min_nodes=${ONEAPP_FL_MIN_NODES}
    fi
    printf 'FL_NODECOUNT_DATABASE=%s\nFL_NODECOUNT_JOB_MIN_NODES=%s\n' "${database}" "${job_min_nodes}" |
        fl_write_file "${FL_ETC}/nodecount.env" 0644 || true
}

# Start (or restart) the exporter and the count publisher, or stop the exporter with ONEAPP_FL_METRICS_ENABLED=NO.
# The counts are published whatever ONEAPP_FL_METRICS_ENABLED says: the elasticity policy needs them.
fl_metrics_bootstrap() {
    fl_systemd_running || return 0
    if [[ "${ONEAPP_FL_METRICS_ENABLED}" == YES ]] && fl_metrics_tls_ready; then
        fl_unit_apply flower-metrics.service
    elif [[ "${ONEAPP_FL_METRICS_ENABLED}" == YES ]]; then
        fl_log "the metrics start once the SuperLink has issued their certificate (flower-metrics-cert)"
    else
        systemctl stop flower-metrics.service >/dev/null 2>&1 || true
    fi
    if fl_onegate_configured; then
        fl_unit_apply flower-nodecount.service
    else
        systemctl stop flower-nodecount.service >/dev/null 2>&1 || true
    fi
    fl_metrics_tls_bootstrap
}
