# shellcheck shell=bash
# Certificates with openssl: the appliance CA, server certificates with SANs for every address of the
# host, the hostname, localhost and 127.0.0.1, and checks of user-provided certificates.
#
# Generated material is kept across reboots: a certificate is only re-issued when its SANs no longer
# match the host, it does not verify against the CA, or it expires within 30 days. Private keys are
# created with umask 077 (mode 0600).

: "${FL_TLS_CA_DAYS:=3650}"
: "${FL_TLS_SERVER_DAYS:=825}"

# Every global address of the host (IPv4 and IPv6), the NIC addresses from the context, 127.0.0.1.
fl_tls_host_addresses() {
    {
        ip -o addr show scope global 2>/dev/null | awk '{ split($4, a, "/"); print a[1] }'
        local variable
        for variable in $(compgen -v | grep -E '^ETH[0-9]+_IP6?$' || true); do
            printf '%s\n' "${!variable}"
        done
        printf '127.0.0.1\n'
    } | grep -E '^[0-9A-Fa-f:.]+$' | sort -u
}

fl_tls_host_names() {
    {
        hostname 2>/dev/null || true
        hostname -f 2>/dev/null || true
        printf 'localhost\n'
    } | grep -E '^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$' | sort -u
}

# The wanted SAN list, "DNS:a,DNS:b,IP:c", sorted (the same form as fl_tls_cert_sans prints).
fl_tls_wanted_sans() {
    {
        fl_tls_host_names | sed 's/^/DNS:/'
        fl_tls_host_addresses | sed 's/^/IP:/'
    } | sort -u | paste -sd, -
}

# The SANs of a certificate, normalised to "DNS:a,IP:b" and sorted.
fl_tls_cert_sans() {
    openssl x509 -in "$1" -noout -ext subjectAltName 2>/dev/null |
        tail -n +2 | tr ',' '\n' | sed -e 's/^ *//' -e 's/^IP Address:/IP:/' |
        grep -E '^(DNS|IP):' | sort -u | paste -sd, -
}

# SHA-256 fingerprint of a certificate, "AB:CD:...".
fl_tls_fingerprint() {
    openssl x509 -in "$1" -noout -fingerprint -sha256 | cut -d= -f2
}

fl_tls_new_ec_key() {
    local path=$1 curve=$2
    (umask 077 && openssl genpkey -algorithm EC -pkeyopt "ec_paramgen_curve:${curve}" -out "${path}" 2>/dev/null)
}

# Create the CA (dir/ca.key, dir/ca.pem) unless it exists. Prints nothing; fails the stage on error.
fl_tls_ensure_ca() {
    local dir=$1 name=$2 config
    if [[ -s "${dir}/ca.pem" && -s "${dir}/ca.key" ]]; then
        return 0
    fi
    mkdir -p "${dir}"
    chmod 0755 "${dir}"
    config=$(mktemp)
    fl_render openssl-ca.cnf "NAME=${name}" >"${config}" || exit 1
    fl_tls_new_ec_key "${dir}/ca.key.new" P-384 || fl_fail "could not create the CA key in ${dir}"
    if ! openssl req -new -x509 -config "${config}" -key "${dir}/ca.key.new" -sha384 \
        -days "${FL_TLS_CA_DAYS}" -set_serial "0x$(openssl rand -hex 16)" -out "${dir}/ca.pem.new" 2>/dev/null; then
        rm -f "${config}" "${dir}/ca.key.new" "${dir}/ca.pem.new"
        fl_fail "could not create the CA certificate in ${dir}"
    fi
    rm -f "${config}"
    chmod 0644 "${dir}/ca.pem.new"
    mv -f "${dir}/ca.key.new" "${dir}/ca.key"
    mv -f "${dir}/ca.pem.new" "${dir}/ca.pem"
    fl_log "created the appliance CA ${dir}/ca.pem ($(fl_tls_fingerprint "${dir}/ca.pem"))"
}

# Is dir/server.pem usable: issued by dir/ca.pem for the wanted SANs, valid 30 more days? The SAN
# list it was issued for is kept next to it (server.sans): openssl prints IPv6 SANs expanded, so the
# certificate's own text does not compare with the wanted list.
fl_tls_server_cert_current() {
    local dir=$1 sans=$2
    [[ -s "${dir}/server.pem" && -s "${dir}/server.key" ]] || return 1
    openssl verify -CAfile "${dir}/ca.pem" "${dir}/server.pem" >/dev/null 2>&1 || return 1
    openssl x509 -in "${dir}/server.pem" -noout -checkend 2592000 >/dev/null 2>&1 || return 1
    [[ "$(cat "${dir}/server.sans" 2>/dev/null || true)" == "${sans}" ]]
}

# Issue dir/server.pem (key dir/server.key) from the CA in dir with the given SANs, unless current.
# Sets FL_TLS_ISSUED=YES when a new certificate was issued, NO when the existing one was kept.
fl_tls_ensure_server_cert() {
    local dir=$1 sans=$2 common_name=$3 config csr
    FL_TLS_ISSUED=NO
    if fl_tls_server_cert_current "${dir}" "${sans}"; then
        return 0
    fi
    config=$(mktemp)
    csr=$(mktemp)
    fl_render openssl-server.cnf "NAME=${common_name}" "SANS=${sans}" >"${config}" || exit 1
    if [[ ! -s "${dir}/server.key" ]]; then
        fl_tls_new_ec_key "${dir}/server.key" P-256 || fl_fail "could not create the server key in ${dir}"
    fi
    if ! openssl req -new -config "${config}" -key "${dir}/server.key" -out "${csr}" 2>/dev/null ||
        ! openssl x509 -req -in "${csr}" -CA "${dir}/ca.pem" -CAkey "${dir}/ca.key" -sha384 \
            -set_serial "0x$(openssl rand -hex 16)" -days "${FL_TLS_SERVER_DAYS}" \
            -extfile "${config}" -extensions v3_server -out "${dir}/server.pem.new" 2>/dev/null; then
        rm -f "${config}" "${csr}" "${dir}/server.pem.new"
        fl_fail "could not issue the server certificate in ${dir}"
    fi
    rm -f "${config}" "${csr}"
    chmod 0644 "${dir}/server.pem.new"
    mv -f "${dir}/server.pem.new" "${dir}/server.pem"
    printf '%s\n' "${sans}" >"${dir}/server.sans"
    fl_log "issued the server certificate ${dir}/server.pem for ${sans}"
    # shellcheck disable=SC2034  # read by the callers
    FL_TLS_ISSUED=YES
}

# Check a user-provided certificate set: PEM certificate (leaf first, then any intermediates), a private
# key that matches it, and a CA that verifies it. Fails naming the parameter at fault.
fl_tls_check_user_certs() {
    local cert=$1 key=$2 ca=$3
    openssl x509 -in "${cert}" -noout 2>/dev/null || fl_fail "ONEAPP_FL_SSL_CERT: not a PEM certificate"
    openssl pkey -in "${key}" -noout 2>/dev/null || fl_fail "ONEAPP_FL_SSL_KEY: not a PEM private key"
    openssl x509 -in "${ca}" -noout 2>/dev/null || fl_fail "ONEAPP_FL_SSL_CA: not a PEM certificate"
    if [[ "$(openssl x509 -in "${cert}" -noout -pubkey 2>/dev/null)" != \
        "$(openssl pkey -in "${key}" -pubout 2>/dev/null)" ]]; then
        fl_fail "ONEAPP_FL_SSL_KEY: does not match the certificate in ONEAPP_FL_SSL_CERT"
    fi
    if ! openssl verify -CAfile "${ca}" -untrusted "${cert}" "${cert}" >/dev/null 2>&1; then
        fl_fail "ONEAPP_FL_SSL_CERT: does not verify against ONEAPP_FL_SSL_CA (or has expired)"
    fi
    openssl x509 -in "${cert}" -noout -checkend 0 >/dev/null 2>&1 ||
        fl_fail "ONEAPP_FL_SSL_CERT: the certificate has expired"
}
