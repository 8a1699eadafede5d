# shellcheck shell=bash
# TLS for the metrics of both roles (ONEAPP_FL_METRICS_TLS=YES, docs/monitoring.md "TLS"): the SuperLink
# serves its own server certificate and signs its SuperNodes' metrics certificates; a SuperNode gets its
# certificate from the SuperLink through OneGate (bin/flower-metrics-cert, flower-metrics-cert.service).
# Kept apart from the SuperNode's start path: nothing here runs before the SuperNode has found its
# SuperLink and pinned its CA.

: "${FL_METRICS_TLS_DIR:=${FL_ETC}/metrics-tls}"

# Write metrics-cert.env (the arguments of flower-metrics-cert.service) for the role, or remove it.
fl_metrics_tls_configure() {
    local role=$1 args
    if [[ "${ONEAPP_FL_METRICS_ENABLED}" != YES || "${ONEAPP_FL_METRICS_TLS:-NO}" != YES ]]; then
        rm -f "${FL_ETC}/metrics-cert.env"
        return 0
    fi
    if [[ "${role}" == superlink ]]; then
        args="sign --ca-dir ${FL_ETC}/tls --interval 30"
    else
        args="request --dir ${FL_METRICS_TLS_DIR} --ca ${FL_STATE}/tls/superlink-ca.pem --interval 15"
    fi
    if printf 'FL_METRICS_CERT_ARGS=%s\n' "${args}" | fl_write_file "${FL_ETC}/metrics-cert.env" 0644; then
        fl_mark_restart flower-metrics-cert.service
    fi
}

# Whether the exporter can start now: always, but on a SuperNode with TLS only once its certificate is
# installed (flower-metrics-cert starts the exporter when it installs one).
fl_metrics_tls_ready() {
    [[ "${ONEAPP_FL_METRICS_TLS:-NO}" != YES || "${FL_ROLE:-}" == superlink ]] && return 0
    [[ -s "${FL_METRICS_TLS_DIR}/node.pem" && -s "${FL_METRICS_TLS_DIR}/node.key" ]]
}

# Start (or restart) flower-metrics-cert.service when TLS is on and OneGate is there; stop it otherwise.
fl_metrics_tls_bootstrap() {
    fl_systemd_running || return 0
    if [[ -s "${FL_ETC}/metrics-cert.env" ]] && fl_onegate_configured; then
        fl_unit_apply flower-metrics-cert.service
    else
        systemctl stop flower-metrics-cert.service >/dev/null 2>&1 || true
    fi
}
