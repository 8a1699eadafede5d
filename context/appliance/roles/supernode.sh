# shellcheck shell=bash
# The SuperNode role: its key pair, finding the SuperLink (OneGate or an explicit address), pinning the
# SuperLink's CA (fail closed), the version policy, the node config, the GPU check, the unit.

FL_SUPERNODE_UNITS=(flower-supernode.service flower-superexec.service)
: "${FL_SUPERNODE_RUNTIME_PORT:=9094}"
# Longest wait for the SuperLink's key sync to enrol this node's key before flower-supernode first starts.
: "${FL_ENROL_WAIT:=120}"
# Longest pause between two looks for the SuperLink in the service (1 s, then this). The service deploys
# the SuperNodes with the SuperLink (OneFlow deployment none), so a SuperNode usually looks before the
# SuperLink published its endpoint (at its READY); a short pause finds it soon after. One OneGate GET per
# look and node, for at most ONEAPP_FL_DISCOVERY_TIMEOUT seconds.
: "${FL_DISCOVERY_POLL:=2}"

supernode_install() {
    fl_install_units "${FL_SUPERNODE_UNITS[@]}" "${FL_METRICS_UNITS[@]}"
}

supernode_validate() {
    local name token
    if [[ -n "${ONEAPP_FL_SUPERLINK}" ]] && ! fl_is_host_port "${ONEAPP_FL_SUPERLINK}"; then
        fl_fail "ONEAPP_FL_SUPERLINK: '$(fl_one_line "${ONEAPP_FL_SUPERLINK}" 80)' is not HOST:PORT"
    fi
    for name in ONEAPP_FL_DISCOVERY_TIMEOUT ONEAPP_FL_MAX_RETRIES; do
        ((${!name} >= 0)) || fl_fail "${name}: '${!name}' must not be negative"
    done
    for token in ${ONEAPP_FL_NODE_CONFIG}; do
        [[ "${token}" =~ ^[A-Za-z_][A-Za-z0-9_.-]*=[^=]*$ ]] ||
            fl_fail "ONEAPP_FL_NODE_CONFIG: '$(fl_one_line "${token}" 60)' is not key=value"
    done
    fl_metrics_validate supernode FL_SUPERNODE_RUNTIME_PORT
    if [[ "${ONEAPP_FL_TLS}" == NO ]]; then
        fl_warn "ONEAPP_FL_TLS=NO: this SuperNode talks to the SuperLink without encryption or authentication"
        [[ -z "${ONEAPP_FL_SUPERLINK_CA}" ]] || fl_warn "ONEAPP_FL_SUPERLINK_CA is ignored: ONEAPP_FL_TLS=NO"
    fi
}

# The GPU policy: GPU images need the GPU unless ONEAPP_FL_GPU=off; CPU images ignore the parameter.
supernode_check_gpu() {
    if [[ "${FL_ACCEL}" != gpu ]]; then
        return 0
    fi
    if [[ "${ONEAPP_FL_GPU}" == off ]]; then
        fl_log "ONEAPP_FL_GPU=off: training on the CPU although this is a GPU image"
        return 0
    fi
    if ! fl_gpu_present; then
        fl_fail "no NVIDIA GPU found (nvidia-smi lists none, no /proc/driver/nvidia/gpus): this GPU image needs one; attach a GPU (PCI passthrough) or set ONEAPP_FL_GPU=off to train on the CPU"
    fi
    fl_log "GPU: $(fl_gpu_names)"
}

# The SuperNode's ECDSA P-384 key pair (OpenSSH format, as Flower expects), made once and kept.
supernode_ensure_key() {
    local dir="${FL_STATE}/keys"
    install -d -m 0700 "${dir}"
    fl_chown_service_user "${dir}"
    if [[ ! -s "${dir}/supernode" || ! -s "${dir}/supernode.pub" ]]; then
        rm -f "${dir}/supernode" "${dir}/supernode.pub"
        (umask 077 && ssh-keygen -q -t ecdsa -b 384 -N '' -C "flower-supernode@$(hostname)" -f "${dir}/supernode") ||
            fl_fail "could not create the SuperNode key in ${dir}"
        fl_log "created the SuperNode key pair ${dir}/supernode"
    fi
    chmod 0600 "${dir}/supernode"
    chmod 0644 "${dir}/supernode.pub"
    fl_chown_service_user "${dir}/supernode" "${dir}/supernode.pub"
}

supernode_configure() {
    supernode_validate
    install -d -m 0755 "${FL_ETC}"
    install -d -m 0750 "${FL_STATE}" "${FL_STATE}/run" "${FL_STATE}/tls" "${FL_STATE}/.flwr"
    fl_chown_service_user "${FL_STATE}" "${FL_STATE}/run" "${FL_STATE}/tls" "${FL_STATE}/.flwr"
    supernode_check_gpu
    supernode_check_data
    fl_metrics_configure supernode
    if [[ "${ONEAPP_FL_TLS}" == YES ]]; then
        supernode_ensure_key
        local pubkey
        pubkey=$(cat "${FL_STATE}/keys/supernode.pub")
        fl_log "SuperNode public key: ${pubkey}"
        # Published now so that the SuperLink can register it before this node first connects.
        if fl_onegate_configured; then
            fl_onegate_publish "ONEAPP_FL_NODE_PUBKEY=${pubkey}" ||
                fl_fail "could not publish the SuperNode public key through OneGate at ${ONEGATE_ENDPOINT}"
        else
            fl_warn "no OneGate: register this SuperNode's public key on the SuperLink yourself (ONEAPP_FL_NODE_KEYS)"
        fi
    fi
}

# Find the SuperLink in this VM's OneFlow service. Sets FL_SL_ENDPOINT, FL_SL_CA (base64),
# FL_SL_FINGERPRINT, FL_SL_VERSION, FL_SL_NODE_AUTH, FL_SL_VMID, FL_SL_ENROLMENT and FL_SERVICE_JSON.
# Returns 1 when none is published (yet).
supernode_lookup_service() {
    local deadline=$1 document
    document=$(fl_onegate_service_vms "${deadline}") || [[ $? -eq 3 ]] || return 1
    FL_SERVICE_JSON=${document}
    {
        IFS= read -r FL_SL_ENDPOINT
        IFS= read -r FL_SL_CA
        IFS= read -r FL_SL_FINGERPRINT
        IFS= read -r FL_SL_VERSION
        IFS= read -r FL_SL_NODE_AUTH
        IFS= read -r FL_SL_VMID
        IFS= read -r FL_SL_ENROLMENT
    } < <(jq -r '
        [ .SERVICE.roles[]?.nodes[]?.vm_info.VM
          | select((.USER_TEMPLATE.ONEAPP_FL_ENDPOINT // "") != "") ]
        | sort_by(.ID | tonumber) | first // {} | (.ID // "" | tostring) as $id | .USER_TEMPLATE // {}
        | (.ONEAPP_FL_ENDPOINT // ""), (.ONEAPP_FL_CA_CERT // ""),
          (.ONEAPP_FL_CA_FINGERPRINT // ""), (.ONEAPP_FL_FLOWER_VERSION // ""),
          (.ONEAPP_FL_NODE_AUTH // ""), $id, (.ONEAPP_FL_ENROLMENT // "")
    ' <<<"${document}" 2>/dev/null || true) || true
    [[ -n "${FL_SL_ENDPOINT}" ]]
}

supernode_discover() {
    FL_SL_ENDPOINT="" FL_SL_CA="" FL_SL_FINGERPRINT="" FL_SL_VERSION="" FL_SL_NODE_AUTH="" FL_SERVICE_JSON=""
    FL_SL_VMID="" FL_SL_ENROLMENT=""
    if [[ -n "${ONEAPP_FL_SUPERLINK}" ]]; then
        # Explicit address; the service (if any) may still tell the CA and the version.
        if fl_onegate_configured; then
            supernode_lookup_service 10 || true
        fi
        FL_SL_ENDPOINT=${ONEAPP_FL_SUPERLINK}
        fl_log "SuperLink given by ONEAPP_FL_SUPERLINK: ${FL_SL_ENDPOINT}"
        return 0
    fi
    fl_onegate_configured ||
        fl_fail "ONEAPP_FL_SUPERLINK is empty and there is no OneGate to discover the SuperLink (TOKEN=YES missing from the context?)"
    fl_log "looking for the SuperLink of this service through OneGate (up to ${ONEAPP_FL_DISCOVERY_TIMEOUT} s)"
    # shellcheck disable=SC2317  # called through fl_retry_until
    _fl_lookup_once() { supernode_lookup_service 5; }
    if ! fl_retry_until "${ONEAPP_FL_DISCOVERY_TIMEOUT}" "${FL_DISCOVERY_POLL}" _fl_lookup_once; then
        fl_fail "no SuperLink published ONEAPP_FL_ENDPOINT in this VM's OneFlow service within ${ONEAPP_FL_DISCOVERY_TIMEOUT} s (set ONEAPP_FL_SUPERLINK to give it explicitly)"
    fi
    fl_log "found the SuperLink at ${FL_SL_ENDPOINT} (Flower ${FL_SL_VERSION:-unknown})"
}

# Decide the CA to trust and pin it in FL_STATE/tls/superlink-ca.pem. Fails closed.
supernode_pin_ca() {
    local pinned="${FL_STATE}/tls/superlink-ca.pem" published fingerprint
    if [[ -n "${ONEAPP_FL_SUPERLINK_CA}" ]]; then
        fl_param_decode_to ONEAPP_FL_SUPERLINK_CA "${pinned}" 0644
        openssl x509 -in "${pinned}" -noout 2>/dev/null ||
            fl_fail "ONEAPP_FL_SUPERLINK_CA: not a PEM certificate"
        fl_log "trusting the CA from ONEAPP_FL_SUPERLINK_CA ($(fl_tls_fingerprint "${pinned}"))"
        return 0
    fi
    if [[ -n "${FL_SL_CA}" ]]; then
        published=$(mktemp)
        printf '%s' "${FL_SL_CA}" | base64 -d >"${published}" 2>/dev/null || true
        if ! openssl x509 -in "${published}" -noout 2>/dev/null; then
            rm -f "${published}"
            fl_fail "the SuperLink published an ONEAPP_FL_CA_CERT that is not a PEM certificate"
        fi
        fingerprint=$(fl_tls_fingerprint "${published}")
        if [[ -n "${FL_SL_FINGERPRINT}" && "${FL_SL_FINGERPRINT}" != "${fingerprint}" ]]; then
            rm -f "${published}"
            fl_fail "the SuperLink's published CA does not match its published fingerprint ${FL_SL_FINGERPRINT}"
        fi
        if [[ -s "${pinned}" ]]; then
            if ! cmp -s "${published}" "${pinned}"; then
                rm -f "${published}"
                fl_fail "the SuperLink now publishes another CA (${fingerprint}) than the one pinned at first contact ($(fl_tls_fingerprint "${pinned}")); refusing to switch (set ONEAPP_FL_SUPERLINK_CA to trust a new CA)"
            fi
            rm -f "${published}"
        else
            fl_write_file "${pinned}" 0644 <"${published}" || true
            rm -f "${published}"
            fl_log "pinned the SuperLink CA ${fingerprint}"
        fi
        return 0
    fi
    if [[ -s "${pinned}" ]]; then
        fl_log "using the pinned SuperLink CA ($(fl_tls_fingerprint "${pinned}"))"
        return 0
    fi
    fl_fail "no CA certificate for the SuperLink at ${FL_SL_ENDPOINT}: set ONEAPP_FL_SUPERLINK_CA (or ONEAPP_FL_TLS=NO to run insecure on purpose)"
}

# Version policy: Flower requires equal major.minor but does not enforce it; we report and act.
supernode_check_version() {
    local ours=$1
    FL_COMPAT=unknown
    if [[ -z "${FL_SL_VERSION}" ]]; then
        fl_warn "the SuperLink's Flower version is unknown (not published): cannot check compatibility"
        return 0
    fi
    FL_COMPAT=$(fl_version_compat "${ours}" "${FL_SL_VERSION}") || FL_COMPAT=unknown
    if [[ "${FL_COMPAT}" == mismatched ]]; then
        if [[ "${ONEAPP_FL_VERSION_POLICY}" == strict ]]; then
            fl_publish_later "ONEAPP_FL_COMPAT=mismatched"
            fl_fail "Flower version mismatch: SuperNode ${ours}, SuperLink ${FL_SL_VERSION} (major.minor differ) and ONEAPP_FL_VERSION_POLICY=strict"
        fi
        fl_warn "Flower version mismatch: SuperNode ${ours}, SuperLink ${FL_SL_VERSION}; running anyway (ONEAPP_FL_VERSION_POLICY=warn)"
    else
        fl_log "Flower versions ${FL_COMPAT}: SuperNode ${ours}, SuperLink ${FL_SL_VERSION}"
    fi
}

supernode_node_config() {
    if [[ -n "${ONEAPP_FL_NODE_CONFIG}" ]]; then
        printf '%s\n' "${ONEAPP_FL_NODE_CONFIG}"
        return
    fi
    if [[ -z "${FL_SERVICE_JSON}" ]] && fl_onegate_configured; then
        FL_SERVICE_JSON=$(fl_onegate_get /service 10 || true)  # ids and cardinality are enough here
    fi
    local derived=""
    if [[ -n "${FL_SERVICE_JSON}" && -n "${VMID:-}" ]]; then
        derived=$(fl_node_config_from_service "${FL_SERVICE_JSON}" "${VMID}" 2>/dev/null || true)
    fi
    if [[ -z "${derived}" ]]; then
        fl_warn "not in a OneFlow service and no ONEAPP_FL_NODE_CONFIG: using partition-id=0 num-partitions=1"
        derived="partition-id=0 num-partitions=1"
    fi
    printf '%s\n' "${derived}"
}

# Try the SuperLink's /health with the pinned CA. A TLS failure fails closed; an unreachable SuperLink
# is only reported (Flower keeps retrying, and the edge profile is made for that).
supernode_preflight() {
    local scheme=https status=0 options=()
    if [[ "${ONEAPP_FL_TLS}" == YES ]]; then
        options=(--cacert "${FL_STATE}/tls/superlink-ca.pem")
    else
        scheme=http
    fi
    curl --silent --show-error --output /dev/null --connect-timeout 5 --max-time 15 "${options[@]}" \
        "${scheme}://${FL_SL_ENDPOINT}/health" 2>"${FL_RUN}/preflight.err" || status=$?
    case "${status}" in
        0) fl_log "the SuperLink at ${FL_SL_ENDPOINT} answers and its certificate verifies" ;;
        35 | 51 | 53 | 54 | 58 | 59 | 60 | 64 | 66 | 77 | 80 | 82 | 83 | 90 | 91)
            fl_fail "TLS verification of the SuperLink at ${FL_SL_ENDPOINT} failed with the trusted CA ($(fl_tls_fingerprint "${FL_STATE}/tls/superlink-ca.pem")): $(fl_one_line "$(cat "${FL_RUN}/preflight.err")" 160)"
            ;;
        *) fl_warn "the SuperLink at ${FL_SL_ENDPOINT} is not reachable now (curl status ${status}); the SuperNode keeps retrying" ;;
    esac
}

# Whether to present this node's key: a Flower SuperLink without --enable-supernode-auth refuses a key it
# does not know (2004) but takes a node with none, and one with auth on refuses a node without a key (2001).
# The SuperLink of the service publishes its setting; ONEAPP_FL_NODE_AUTH covers an explicit SuperLink.
supernode_node_auth() {
    case "${FL_SL_NODE_AUTH}" in
        YES | NO)
            [[ "${FL_SL_NODE_AUTH}" == "${ONEAPP_FL_NODE_AUTH}" ]] ||
                fl_warn "the SuperLink publishes ONEAPP_FL_NODE_AUTH=${FL_SL_NODE_AUTH}; following it, not this VM's ${ONEAPP_FL_NODE_AUTH}"
            printf '%s\n' "${FL_SL_NODE_AUTH}"
            ;;
        *) printf '%s\n' "${ONEAPP_FL_NODE_AUTH}" ;;
    esac
}

# Wait (at most FL_ENROL_WAIT seconds) until the SuperLink of this service lists this node's key among the
# keys its key sync registered (ONEAPP_FL_NODES_ENROLLED, see bin/flower-keysync), so that flower-supernode
# does not start before its key is known, fail its activation and back off (2, 4, 8 .. s). Only where the
# SuperLink says it publishes that list (ONEAPP_FL_ENROLMENT=keysync) and this node presents its key.
# Never fatal: at the bound the SuperNode starts anyway and Flower's own retries take over, as before. The
# list is a hint, not trust: the SuperLink alone decides whether the key is accepted.
supernode_wait_enrolled() {
    local node_auth=$1 key hash enrolled="" started
    [[ "${ONEAPP_FL_TLS}" == YES && "${node_auth}" == YES ]] || return 0
    [[ "${FL_SL_ENROLMENT}" == keysync && "${FL_SL_VMID}" =~ ^[0-9]+$ ]] || return 0
    fl_onegate_configured || return 0
    key=$(cat "${FL_STATE}/keys/supernode.pub" 2>/dev/null) || return 0
    hash=$(fl_node_key_hash "${key}")
    # shellcheck disable=SC2317  # called through fl_retry_until
    _fl_enrolled_once() {
        enrolled=$(fl_onegate_get "/vms/${FL_SL_VMID}" 5 2>/dev/null |
            jq -r '.VM.USER_TEMPLATE.ONEAPP_FL_NODES_ENROLLED // ""' 2>/dev/null) || enrolled=""
        [[ " ${enrolled} " == *" ${hash} "* ]]
    }
    started=$(date +%s)
    if fl_retry_until "${FL_ENROL_WAIT}" 1 _fl_enrolled_once; then
        fl_log "the SuperLink (VM ${FL_SL_VMID}) enrolled this node's key ${hash:0:16} ($(($(date +%s) - started)) s)"
    else
        fl_warn "the SuperLink (VM ${FL_SL_VMID}) did not list this node's key ${hash:0:16} as enrolled within ${FL_ENROL_WAIT} s; starting anyway (the SuperNode retries until it is)"
    fi
}

supernode_bootstrap() {
    local ours node_config node_auth args=() changed=NO
    ours=$(fl_flower_version) || fl_fail "no flwr installation found in ${FL_VENV}"
    mkdir -p "${FL_RUN}"
    supernode_discover
    if [[ "${ONEAPP_FL_TLS}" == YES ]]; then
        supernode_pin_ca
    fi
    supernode_check_version "${ours}"
    node_config=$(supernode_node_config)
    node_config=$(supernode_data_node_config "${node_config}")
    fl_log "node config: ${node_config}"
    supernode_preflight

    args=(--superlink "${FL_SL_ENDPOINT}")
    node_auth=$(supernode_node_auth)
    if [[ "${ONEAPP_FL_TLS}" == YES ]]; then
        args+=(--root-certificates "${FL_STATE}/tls/superlink-ca.pem")
        if [[ "${node_auth}" == YES ]]; then
            args+=(--auth-supernode-private-key "${FL_STATE}/keys/supernode")
        fi
    else
        args+=(--insecure)
    fi
    args+=(--node-config "${node_config}" --isolation "${ONEAPP_FL_ISOLATION}"
        --host 127.0.0.1 --port "${FL_SUPERNODE_RUNTIME_PORT}")
    if [[ "${FL_PROFILE}" != edge && "${ONEAPP_FL_MAX_RETRIES}" -gt 0 ]]; then
        args+=(--max-retries "${ONEAPP_FL_MAX_RETRIES}")
    fi
    fl_write_args "${FL_ETC}/supernode.args" "${args[@]}" && changed=YES
    fl_write_args "${FL_ETC}/superexec.args" --runtime-api-address "127.0.0.1:${FL_SUPERNODE_RUNTIME_PORT}" \
        --insecure && changed=YES
    {
        printf 'FLWR_LOG_LEVEL=%s\n' "${ONEAPP_FL_LOG_LEVEL}"
        if [[ "${FL_PROFILE}" == edge ]]; then
            printf 'FL_BACKOFF_MAX=300\n'
        fi
        if [[ "${FL_ACCEL}" == gpu && "${ONEAPP_FL_GPU}" == off ]]; then
            printf 'CUDA_VISIBLE_DEVICES=\n'
        fi
    } | fl_write_file "${FL_ETC}/supernode.env" 0644 && changed=YES
    if [[ "${changed}" == YES ]]; then
        fl_mark_restart flower-supernode.service
        fl_mark_restart flower-superexec.service
    fi

    supernode_wait_enrolled "${node_auth}"
    fl_unit_apply flower-supernode.service
    if [[ "${ONEAPP_FL_ISOLATION}" == process ]]; then
        fl_unit_apply flower-superexec.service
    elif fl_systemd_running; then
        systemctl stop flower-superexec.service >/dev/null 2>&1 || true
    fi

    fl_metrics_bootstrap

    fl_publish_later "ONEAPP_FL_FLOWER_VERSION=${ours}" "ONEAPP_FL_COMPAT=${FL_COMPAT}"
    if [[ -s "${FL_STATE}/keys/supernode.pub" ]]; then
        fl_publish_later "ONEAPP_FL_NODE_PUBKEY=$(cat "${FL_STATE}/keys/supernode.pub")"
    fi
}

# --- train on deploy: the node's own data (docs/train-on-deploy.md) ---------------------------------------
# ONEAPP_FL_DATA names a CSV or NPZ file on this VM; the ClientApp reads it through the node config key
# data-path (apps/factory-app, factory_app/client_app.py). The data never leaves the VM.

# The file must exist and be readable by the service user, in a place the units can see (ProtectHome
# hides /home, /root and /run/user from flower-supernode and flower-superexec).
supernode_check_data() {
    local path=${ONEAPP_FL_DATA}
    [[ -n "${path}" ]] || return 0
    if [[ "${path}" != /* || "${path}" =~ [[:space:]\"\'=] ]]; then
        fl_fail "ONEAPP_FL_DATA: '$(fl_one_line "${path}" 80)' must be an absolute path without spaces, quotes or '='"
    fi
    case "${path}" in
        /home/* | /root/* | /run/user/*)
            fl_fail "ONEAPP_FL_DATA: ${path} is under /home, /root or /run/user, which the SuperNode's units cannot see (ProtectHome); put the data elsewhere (e.g. an attached disk under /mnt or /srv)"
            ;;
    esac
    [[ -f "${path}" ]] || fl_fail "ONEAPP_FL_DATA: ${path} does not exist or is not a file"
    case "${path,,}" in
        *.csv | *.npz) ;;
        *) fl_fail "ONEAPP_FL_DATA: ${path} is neither .csv nor .npz (the formats of docs/train-on-deploy.md)" ;;
    esac
    if fl_user_exists && [[ "$(id -u)" -eq 0 ]]; then
        setpriv --reuid="${FL_SERVICE_USER}" --regid="${FL_SERVICE_USER}" --init-groups -- test -r "${path}" ||
            fl_fail "ONEAPP_FL_DATA: ${path} is not readable by the service user ${FL_SERVICE_USER} (its file and directory permissions)"
    elif [[ ! -r "${path}" ]]; then
        fl_fail "ONEAPP_FL_DATA: ${path} is not readable"
    fi
    fl_log "training data: ${path} ($(stat -c %s "${path}") bytes)"
}

# The node config with data-path="<ONEAPP_FL_DATA>" added (a TOML string, as Flower parses --node-config).
supernode_data_node_config() {
    local config=$1
    if [[ -n "${ONEAPP_FL_DATA}" ]]; then
        config="${config:+${config} }data-path=\"${ONEAPP_FL_DATA}\""
    fi
    printf '%s\n' "${config}"
}
