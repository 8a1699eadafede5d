# shellcheck shell=bash
# The SuperLink role: Flower's HTTPS API on loopback, a filtering TLS proxy for the Fleet API, the
# SuperNode key sync, certificates, state database and what it publishes through OneGate.

FL_SUPERLINK_UNITS=(flower-superlink.service flower-superexec.service flower-fleet-proxy.service
    flower-keysync.service flower-readiness.service)
FL_SUPERLINK_UNITS+=(flower-job.service) # train on deploy (superlink_configure_job below)

: "${FL_START_DEADLINE:=300}"

superlink_install() {
    fl_install_units "${FL_SUPERLINK_UNITS[@]}" "${FL_METRICS_UNITS[@]}"
    # The distribution's nginx service stays off: the appliance runs its own proxy unit as the service
    # user with its own configuration (the same on every distribution).
    if command -v systemctl >/dev/null 2>&1; then
        systemctl disable nginx.service >/dev/null 2>&1 || true
        if fl_systemd_running; then
            systemctl stop nginx.service >/dev/null 2>&1 || true
        fi
    fi
}

# Semantic checks across parameters (types were checked against the declaration already).
superlink_validate() {
    local cidr problem
    problem=$(fl_param_port_problem ONEAPP_FL_FLEET_PORT ONEAPP_FL_API_PORT) || fl_fail "${problem}"
    problem=$(fl_param_port_problem ONEAPP_FL_API_PORT) || fl_fail "${problem}"
    # flower-superlink runs as the service user without CAP_NET_BIND_SERVICE (the Fleet proxy has it).
    ((ONEAPP_FL_API_PORT >= 1024)) ||
        fl_fail "ONEAPP_FL_API_PORT: ${ONEAPP_FL_API_PORT} is below 1024: the SuperLink runs unprivileged and cannot bind it"
    [[ "${ONEAPP_FL_API_PORT}" != 9094 ]] || fl_warn "ONEAPP_FL_API_PORT 9094 is also the SuperNode runtime port"
    IFS=', ' read -r -a _fl_cidrs <<<"${ONEAPP_FL_CONTROL_ALLOW}"
    for cidr in "${_fl_cidrs[@]}"; do
        [[ -z "${cidr}" ]] && continue
        fl_is_cidr "${cidr}" || fl_fail "ONEAPP_FL_CONTROL_ALLOW: '$(fl_one_line "${cidr}" 60)' is not an IP address or CIDR"
    done
    if [[ "${ONEAPP_FL_TLS}" == NO && "${ONEAPP_FL_NODE_AUTH}" == YES ]]; then
        fl_fail "ONEAPP_FL_NODE_AUTH=YES needs ONEAPP_FL_TLS=YES (Flower refuses SuperNode authentication without TLS); set ONEAPP_FL_NODE_AUTH=NO to run insecure"
    fi
    if [[ -n "${ONEAPP_FL_SSL_CERT}${ONEAPP_FL_SSL_KEY}${ONEAPP_FL_SSL_CA}" ]]; then
        [[ -n "${ONEAPP_FL_SSL_CERT}" ]] || fl_fail "ONEAPP_FL_SSL_CERT: missing (ONEAPP_FL_SSL_KEY/ONEAPP_FL_SSL_CA given without it)"
        [[ -n "${ONEAPP_FL_SSL_KEY}" ]] || fl_fail "ONEAPP_FL_SSL_KEY: missing (needed with ONEAPP_FL_SSL_CERT)"
        [[ -n "${ONEAPP_FL_SSL_CA}" ]] || fl_fail "ONEAPP_FL_SSL_CA: missing (needed with ONEAPP_FL_SSL_CERT)"
        [[ "${ONEAPP_FL_TLS}" == YES ]] || fl_warn "ONEAPP_FL_SSL_* are ignored: ONEAPP_FL_TLS=NO"
    fi
    [[ "${ONEAPP_FL_NODE_AUTH}" == YES || -z "${ONEAPP_FL_NODE_KEYS}" ]] ||
        fl_warn "ONEAPP_FL_NODE_KEYS is ignored: ONEAPP_FL_NODE_AUTH=NO"
    fl_metrics_validate superlink ONEAPP_FL_FLEET_PORT ONEAPP_FL_API_PORT
}

# The address SuperNodes use: the first NIC's address from the context, else the first global IPv4.
fl_primary_address() {
    if [[ -n "${ETH0_IP:-}" ]]; then
        printf '%s\n' "${ETH0_IP}"
        return
    fi
    ip -o -4 addr show scope global 2>/dev/null | awk '{ split($4, a, "/"); print a[1]; exit }'
}

superlink_configure() {
    superlink_validate
    local tls_dir="${FL_ETC}/tls"
    install -d -m 0755 "${FL_ETC}" "${FL_ETC}/proxy"
    install -d -m 0750 "${FL_STATE}" "${FL_STATE}/run" "${FL_STATE}/backups" "${FL_STATE}/keysync" "${FL_STATE}/.flwr"
    fl_chown_service_user "${FL_STATE}" "${FL_STATE}/run" "${FL_STATE}/backups" "${FL_STATE}/.flwr"

    FL_CHANGED=NO
    if [[ "${ONEAPP_FL_TLS}" == YES ]]; then
        superlink_configure_tls "${tls_dir}"
    fi
    superlink_write_runtime_config
    superlink_write_proxy_config
    superlink_write_keysync_config
    superlink_backup_db_before_upgrade
    superlink_configure_job
    fl_metrics_configure superlink
    if [[ "${FL_CHANGED}" == YES ]]; then
        fl_mark_restart flower-superlink.service
        fl_mark_restart flower-superexec.service
        fl_mark_restart flower-fleet-proxy.service
    fi
}

# CA, the internal server certificate (SuperLink on loopback) and the public one (the Fleet proxy).
# Sets FL_CHANGED=YES when anything the running services use changed.
superlink_configure_tls() {
    local dir=$1 public_cert public_key public_ca
    fl_tls_ensure_ca "${dir}" "Flower SuperLink CA ($(hostname))"
    chmod 0600 "${dir}/ca.key"
    fl_tls_ensure_server_cert "${dir}" "$(fl_tls_wanted_sans)" "$(hostname)"
    [[ "${FL_TLS_ISSUED}" == NO ]] || FL_CHANGED=YES
    chmod 0600 "${dir}/server.key"
    fl_chown_service_user "${dir}/server.key"

    if [[ -n "${ONEAPP_FL_SSL_CERT}" ]]; then
        fl_param_decode_to ONEAPP_FL_SSL_CERT "${dir}/user.pem.new" 0644
        fl_param_decode_to ONEAPP_FL_SSL_KEY "${dir}/user.key.new" 0600
        fl_param_decode_to ONEAPP_FL_SSL_CA "${dir}/user-ca.pem.new" 0644
        fl_tls_check_user_certs "${dir}/user.pem.new" "${dir}/user.key.new" "${dir}/user-ca.pem.new"
        local file
        for file in user.pem user.key user-ca.pem; do
            if ! cmp -s "${dir}/${file}.new" "${dir}/${file}"; then
                mv -f "${dir}/${file}.new" "${dir}/${file}"
                FL_CHANGED=YES
            else
                rm -f "${dir}/${file}.new"
            fi
        done
        fl_chown_service_user "${dir}/user.key"
        public_cert="${dir}/user.pem" public_key="${dir}/user.key" public_ca="${dir}/user-ca.pem"
        fl_log "the Fleet proxy presents the certificate from ONEAPP_FL_SSL_CERT"
    else
        rm -f "${dir}/user.pem" "${dir}/user.key" "${dir}/user-ca.pem"
        public_cert="${dir}/server.pem" public_key="${dir}/server.key" public_ca="${dir}/ca.pem"
    fi
    if printf 'FL_PUBLIC_CERT=%s\nFL_PUBLIC_KEY=%s\nFL_PUBLIC_CA=%s\n' "${public_cert}" "${public_key}" \
        "${public_ca}" | fl_write_file "${dir}/public.env" 0644; then
        FL_CHANGED=YES
    fi
}

# Argument and environment files of the SuperLink (and the external SuperExec in process isolation),
# the flwr CLI connection used by the key sync and by administrators. Sets FL_CHANGED=YES when changed.
superlink_write_runtime_config() {
    local tls_dir="${FL_ETC}/tls" args=()
    if [[ "${ONEAPP_FL_TLS}" == YES ]]; then
        args+=(--ssl-ca-certfile "${tls_dir}/ca.pem" --ssl-certfile "${tls_dir}/server.pem"
            --ssl-keyfile "${tls_dir}/server.key")
    else
        args+=(--insecure)
    fi
    args+=(--host 127.0.0.1 --port "${ONEAPP_FL_API_PORT}" --isolation "${ONEAPP_FL_ISOLATION}"
        --disable-runtime-dependency-installation)
    if [[ "${ONEAPP_FL_DATABASE}" == persistent ]]; then
        args+=(--database "${FL_STATE}/state.db")
    fi
    if [[ "${ONEAPP_FL_NODE_AUTH}" == YES ]]; then
        args+=(--enable-supernode-auth)
    fi
    if fl_write_args "${FL_ETC}/superlink.args" "${args[@]}"; then FL_CHANGED=YES; fi

    local superexec=(--runtime-api-address "127.0.0.1:${ONEAPP_FL_API_PORT}")
    if [[ "${ONEAPP_FL_TLS}" == YES ]]; then
        superexec+=(--root-certificates "${tls_dir}/ca.pem")
    else
        superexec+=(--insecure)
    fi
    if fl_write_args "${FL_ETC}/superexec.args" "${superexec[@]}"; then FL_CHANGED=YES; fi
    if printf 'FLWR_LOG_LEVEL=%s\n' "${ONEAPP_FL_LOG_LEVEL}" | fl_write_file "${FL_ETC}/superlink.env" 0644; then
        FL_CHANGED=YES
    fi

    # flwr CLI connection "local" (Control API on loopback) for the key sync and for administrators.
    local connection
    if [[ "${ONEAPP_FL_TLS}" == YES ]]; then
        connection=$(printf 'root-certificates = "%s"' "${tls_dir}/ca.pem")
    else
        connection='insecure = true'
    fi
    local flwr_config
    flwr_config=$(fl_render flwr-config.toml "PORT=${ONEAPP_FL_API_PORT}" "CONNECTION=${connection}") || exit 1
    printf '%s\n' "${flwr_config}" | fl_write_file "${FL_STATE}/.flwr/config.toml" 0644 || true
    fl_chown_service_user "${FL_STATE}/.flwr/config.toml"
    if [[ -d "$(dirname "${FL_ADMIN_FLWR_HOME}")" ]]; then
        install -d -m 0700 "${FL_ADMIN_FLWR_HOME}"
        printf '%s\n' "${flwr_config}" | fl_write_file "${FL_ADMIN_FLWR_HOME}/config.toml" 0600 || true
    fi
}

# nginx in front of the Fleet API (templates/nginx.conf): TLS on ONEAPP_FL_FLEET_PORT, only /v1/fleet/ and /health are
# forwarded; every other route (the Control API) answers 403 unless the client is in
# ONEAPP_FL_CONTROL_ALLOW. Marks the proxy for a restart when its configuration changed.
superlink_write_proxy_config() {
    local listen_ssl="" upstream tls_lines="" allow_lines="" cidr listen6="" config
    local FL_PUBLIC_CERT="" FL_PUBLIC_KEY=""
    if [[ "${ONEAPP_FL_TLS}" == YES ]]; then
        # shellcheck disable=SC1091
        . "${FL_ETC}/tls/public.env"
        listen_ssl=" ssl"
        upstream="https://127.0.0.1:${ONEAPP_FL_API_PORT}"
        tls_lines=$(fl_render nginx-tls.conf "CERT=${FL_PUBLIC_CERT}" "KEY=${FL_PUBLIC_KEY}" \
            "CA=${FL_ETC}/tls/ca.pem") || exit 1
    else
        upstream="http://127.0.0.1:${ONEAPP_FL_API_PORT}"
    fi
    IFS=', ' read -r -a _fl_cidrs <<<"${ONEAPP_FL_CONTROL_ALLOW}"
    for cidr in "${_fl_cidrs[@]}"; do
        [[ -n "${cidr}" ]] && allow_lines+="            allow ${cidr};"$'\n'
    done
    if [[ -e /proc/net/if_inet6 ]]; then
        listen6="        listen [::]:${ONEAPP_FL_FLEET_PORT}${listen_ssl};"
    fi
    config=$(fl_render nginx.conf "PORT=${ONEAPP_FL_FLEET_PORT}" "SSL=${listen_ssl}" "LISTEN6=${listen6}" \
        "TLS=${tls_lines}" "UPSTREAM=${upstream}" "ALLOW=${allow_lines}") || exit 1
    printf '%s\n' "${config}" | fl_write_file "${FL_ETC}/proxy/nginx.conf" 0644 || return 0
    fl_mark_restart flower-fleet-proxy.service
}

superlink_write_keysync_config() {
    local keys_file="${FL_ETC}/allowed-keys" line
    {
        printf 'FL_KEYSYNC_AUTOENROLL=%s\n' "${ONEAPP_FL_NODE_AUTOENROLL}"
        printf 'FL_KEYSYNC_KEYS_FILE=%s\n' "${keys_file}"
        printf 'FL_KEYSYNC_DATABASE=%s\n' "${ONEAPP_FL_DATABASE}"
    } | fl_write_file "${FL_ETC}/keysync.env" 0644 || true
    if [[ -n "${ONEAPP_FL_NODE_KEYS}" ]]; then
        local decoded
        decoded=$(printf '%s' "${ONEAPP_FL_NODE_KEYS}" | base64 -d 2>/dev/null) ||
            fl_fail "ONEAPP_FL_NODE_KEYS: is not valid base64"
        while IFS= read -r line; do
            [[ -z "${line}" || "${line}" == \#* ]] && continue
            fl_is_node_pubkey "${line}" ||
                fl_fail "ONEAPP_FL_NODE_KEYS: '$(fl_one_line "${line}" 40)...' is not an OpenSSH ecdsa-sha2-nistp384 public key"
        done <<<"${decoded}"
        printf '%s\n' "${decoded}" | fl_write_file "${keys_file}" 0644 || true
    else
        rm -f "${keys_file}"
    fi
}

# Flower migrates its database one way on a version change: keep a copy taken with sqlite3's online
# backup before a SuperLink of another version opens it.
superlink_backup_db_before_upgrade() {
    local database="${FL_STATE}/state.db" recorded current backup
    current=$(fl_flower_version) || fl_fail "no flwr installation found in ${FL_VENV}"
    recorded=$(cat "${FL_STATE}/flower-version" 2>/dev/null || true)
    if [[ -s "${database}" && -n "${recorded}" && "${recorded}" != "${current}" ]]; then
        backup="${FL_STATE}/backups/state-${recorded}-$(date -u +%Y%m%dT%H%M%SZ).db"
        if ! sqlite3 "${database}" ".backup '${backup}'"; then
            fl_fail "could not back up ${database} before the upgrade from Flower ${recorded} to ${current}"
        fi
        chmod 0600 "${backup}"
        fl_chown_service_user "${backup}"
        fl_log "Flower changed from ${recorded} to ${current}: backed up the state database to ${backup}"
        fl_mark_restart flower-superlink.service
    fi
}

superlink_bootstrap() {
    local tls_dir="${FL_ETC}/tls" cacert=() endpoint_address version
    local FL_PUBLIC_CA=""
    version=$(fl_flower_version) || fl_fail "no flwr installation found in ${FL_VENV}"
    if [[ "${ONEAPP_FL_TLS}" == YES ]]; then
        cacert=(--cacert "${tls_dir}/ca.pem")
        # shellcheck disable=SC1091
        . "${tls_dir}/public.env"
    fi
    local scheme=https
    [[ "${ONEAPP_FL_TLS}" == YES ]] || scheme=http

    fl_unit_apply flower-superlink.service
    if fl_systemd_running; then
        if ! fl_wait_http "${FL_START_DEADLINE}" "${scheme}://127.0.0.1:${ONEAPP_FL_API_PORT}/health" "${cacert[@]}"; then
            fl_fail "the SuperLink did not answer on 127.0.0.1:${ONEAPP_FL_API_PORT} within ${FL_START_DEADLINE} s: $(fl_unit_last_error flower-superlink.service)"
        fi
    fi
    if [[ "${ONEAPP_FL_ISOLATION}" == process ]]; then
        fl_unit_apply flower-superexec.service
    elif fl_systemd_running; then
        systemctl stop flower-superexec.service >/dev/null 2>&1 || true
    fi
    printf '%s\n' "${version}" >"${FL_STATE}/flower-version"

    fl_unit_apply flower-fleet-proxy.service
    if fl_systemd_running; then
        # The proxy's own certificate may name the host differently (user certificates): check it
        # answers, and check the chain with the published CA separately.
        if ! fl_wait_http 60 "${scheme}://127.0.0.1:${ONEAPP_FL_FLEET_PORT}/health" --insecure; then
            fl_fail "the Fleet proxy did not answer on port ${ONEAPP_FL_FLEET_PORT}: $(fl_unit_last_error flower-fleet-proxy.service)"
        fi
    fi

    if [[ "${ONEAPP_FL_NODE_AUTH}" == YES ]]; then
        fl_unit_apply flower-keysync.service
    elif fl_systemd_running; then
        systemctl stop flower-keysync.service >/dev/null 2>&1 || true
    fi

    fl_metrics_bootstrap

    # Active from now until shutdown, when its ExecStop withdraws READY through OneGate.
    fl_unit_apply flower-readiness.service
    superlink_bootstrap_job

    endpoint_address=$(fl_primary_address)
    [[ -n "${endpoint_address}" ]] || fl_fail "the SuperLink has no network address to publish"
    # ONEAPP_FL_ENROLMENT=keysync: the key sync publishes the keys it enrolled (ONEAPP_FL_NODES_ENROLLED),
    # and the SuperNodes wait for theirs there before they first start (roles/supernode.sh).
    local enrolment=none
    [[ "${ONEAPP_FL_NODE_AUTH}" != YES ]] || enrolment=keysync
    fl_publish_later "ONEAPP_FL_ENDPOINT=${endpoint_address}:${ONEAPP_FL_FLEET_PORT}" \
        "ONEAPP_FL_FLOWER_VERSION=${version}" "ONEAPP_FL_NODE_AUTH=${ONEAPP_FL_NODE_AUTH}" \
        "ONEAPP_FL_ENROLMENT=${enrolment}"
    if [[ "${ONEAPP_FL_TLS}" == YES ]]; then
        fl_publish_later "ONEAPP_FL_CA_CERT=$(base64 -w0 <"${FL_PUBLIC_CA}")" \
            "ONEAPP_FL_CA_FINGERPRINT=$(fl_tls_fingerprint "${FL_PUBLIC_CA}")"
    else
        fl_publish_later "ONEAPP_FL_CA_CERT=" "ONEAPP_FL_CA_FINGERPRINT="
    fi
}

# --- train on deploy (docs/train-on-deploy.md) ------------------------------------------------------------
# The job's parameters go to FL_ETC/job.env for flower-job.service, which checks them again, runs the job
# and publishes its progress through OneGate. Empty ONEAPP_FL_APP: no job (the unit is stopped, disabled).

FL_JOB_PARAMS=(ONEAPP_FL_APP ONEAPP_FL_APP_SHA256 ONEAPP_FL_ROUNDS ONEAPP_FL_STRATEGY ONEAPP_FL_MIN_NODES
    ONEAPP_FL_RUN_CONFIG ONEAPP_FL_DP ONEAPP_FL_DP_NOISE ONEAPP_FL_DP_CLIPPING_NORM ONEAPP_FL_DP_SAMPLED_CLIENTS
    ONEAPP_FL_SECAGG ONEAPP_FL_SECAGG_SHARES ONEAPP_FL_SECAGG_THRESHOLD ONEAPP_FL_CHECKPOINT_DIR
    ONEAPP_FL_CHECKPOINT_KEEP)
# A bad job parameter fails the job (flower-job --check, published as ONEAPP_FL_RUN_STATUS=failed), not
# the appliance: fl_params_apply leaves these to it. (SECAGG_SHARES/THRESHOLD are reserved, unchecked
# there, so they keep the declared check.)
FL_PARAMS_DEFERRED="${FL_JOB_PARAMS[*]/ONEAPP_FL_SECAGG_SHARES/}"
FL_PARAMS_DEFERRED=${FL_PARAMS_DEFERRED/ONEAPP_FL_SECAGG_THRESHOLD/}

# A value as systemd's EnvironmentFile reads it: one line, double-quoted, with \ and \" escaped (no
# variable expansion happens there). Newlines become spaces (base64 and run-config split on both).
fl_job_env_value() {
    local value=${1//$'\r'/}
    value=${value//$'\n'/ }
    value=${value//\\/\\\\}
    value=${value//\"/\\\"}
    printf '"%s"' "${value}"
}

# The SuperNode role's cardinality from OneGate (GET /service), for the MIN_NODES check; empty if unknown.
superlink_job_max_nodes() {
    local document
    fl_onegate_configured || return 0
    document=$(fl_onegate_get /service 10 2>/dev/null) || return 0
    jq -r '[.SERVICE.roles[]? | select(.name == "supernode") | .cardinality | tonumber] | first // empty' \
        <<<"${document}" 2>/dev/null || true
}

superlink_configure_job() {
    local env_file="${FL_ETC}/job.env" lines="" name max_nodes problem=""
    if [[ -z "${ONEAPP_FL_APP}" ]]; then
        rm -f "${env_file}" "${FL_ETC}/job.problem"
        return 0
    fi
    max_nodes=$(superlink_job_max_nodes)
    for name in "${FL_JOB_PARAMS[@]}"; do
        lines+="${name}=$(fl_job_env_value "${!name-}")"$'\n'
    done
    lines+="FL_JOB_MAX_NODES=$(fl_job_env_value "${max_nodes}")"
    if fl_render job.env "LINES=${lines}" | fl_write_file "${env_file}" 0600; then
        fl_mark_restart flower-job.service
    fi
    # A bad parameter is the job's failure, not the appliance's: the SuperLink still serves `flwr run`,
    # and flower-job publishes ONEAPP_FL_RUN_STATUS=failed with the reason and starts nothing.
    problem=$(FL_JOB_MAX_NODES="${max_nodes}" "${FL_APPLIANCE_DIR}/bin/flower-job" --check 2>&1 >/dev/null) || true
    if [[ -n "${problem}" ]]; then
        fl_warn "train on deploy: $(fl_one_line "${problem}")"
        printf '%s\n' "${problem}" | fl_write_file "${FL_ETC}/job.problem" 0644 || true
        return 0
    fi
    rm -f "${FL_ETC}/job.problem"
    install -d -m 0750 "${ONEAPP_FL_CHECKPOINT_DIR}" ||
        fl_fail "ONEAPP_FL_CHECKPOINT_DIR: could not create ${ONEAPP_FL_CHECKPOINT_DIR}"
    fl_chown_service_user "${ONEAPP_FL_CHECKPOINT_DIR}"
    superlink_job_rw_dropins "${ONEAPP_FL_CHECKPOINT_DIR}"
}

# The ServerApp writes the checkpoints from flower-superlink (or flower-superexec): a directory outside
# FL_STATE needs their ReadWritePaths (drop-ins; ProtectSystem=strict makes the rest read-only).
superlink_job_rw_dropins() {
    local dir=$1 unit dropin text="" reload=NO
    fl_systemd_running || return 0
    if [[ "${dir}" != "${FL_STATE}" && "${dir}" != "${FL_STATE}"/* ]]; then
        text=$(printf '[Service]\nReadWritePaths=%s' "${dir}")
    fi
    for unit in flower-superlink.service flower-superexec.service flower-job.service; do
        dropin="/etc/systemd/system/${unit}.d/60-job-checkpoints.conf"
        if [[ -z "${text}" ]]; then
            [[ -e "${dropin}" ]] || continue
            rm -f "${dropin}"
        else
            printf '%s\n' "${text}" | fl_write_file "${dropin}" 0644 || continue
        fi
        reload=YES
        fl_mark_restart "${unit}"
    done
    if [[ "${reload}" == YES ]]; then
        systemctl daemon-reload
    fi
}

superlink_bootstrap_job() {
    fl_systemd_running || return 0
    if [[ -z "${ONEAPP_FL_APP}" ]]; then
        systemctl disable --now flower-job.service >/dev/null 2>&1 || true
        return 0
    fi
    systemctl enable flower-job.service >/dev/null 2>&1 || fl_warn "could not enable flower-job.service"
    fl_unit_apply flower-job.service
    fl_log "train on deploy: flower-job.service runs ${ONEAPP_FL_APP:0:60} (progress: ONEAPP_FL_RUN_STATUS)"
}
