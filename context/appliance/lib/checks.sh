# shellcheck shell=bash
# Generic value checks the roles use to validate their ONEAPP_FL_* parameters: each returns 0 when the
# value is well formed and prints nothing, so the caller names the parameter in its own failure message.

# An IPv4 or IPv6 address, optionally with a /prefix (ONEAPP_FL_CONTROL_ALLOW).
fl_is_cidr() {
    local value=$1 address prefix
    address=${value%/*}
    prefix=${value#"${address}"}
    prefix=${prefix#/}
    if [[ "${address}" =~ ^([0-9]{1,3})\.([0-9]{1,3})\.([0-9]{1,3})\.([0-9]{1,3})$ ]]; then
        local octet
        for octet in "${BASH_REMATCH[@]:1}"; do
            ((10#${octet} <= 255)) || return 1
        done
        [[ -z "${prefix}" ]] || { [[ "${prefix}" =~ ^[0-9]{1,2}$ ]] && ((10#${prefix} <= 32)); }
    elif [[ "${address}" =~ ^[0-9A-Fa-f:]+$ && "${address}" == *:* ]]; then
        [[ -z "${prefix}" ]] || { [[ "${prefix}" =~ ^[0-9]{1,3}$ ]] && ((10#${prefix} <= 128)); }
    else
        return 1
    fi
}

# HOST:PORT with a DNS name, an IPv4 address or a bracketed IPv6 address, and a port 1-65535.
fl_is_host_port() {
    local value=$1 port
    if [[ "${value}" =~ ^\[[0-9A-Fa-f:]+\]:([0-9]+)$ || "${value}" =~ ^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?:([0-9]+)$ ]]; then
        port=${BASH_REMATCH[-1]}
        # At most 5 digits before any arithmetic: 10#18446744073709560708 wraps to 9092 in bash.
        [[ "${port}" =~ ^0*[0-9]{1,5}$ ]] && ((10#${port} >= 1 && 10#${port} <= 65535))
    else
        return 1
    fi
}

# An OpenSSH ECDSA P-384 public key line ("ecdsa-sha2-nistp384 AAAA... [comment]").
fl_is_node_pubkey() {
    [[ "$1" =~ ^ecdsa-sha2-nistp384\ AAAAE2VjZHNhLXNoYTItbmlzdHAzODQ[A-Za-z0-9+/=]+(\ .*)?$ ]]
}

# The identity of a SuperNode key: the sha256 of its "type base64" (the comment is not part of it). The
# key sync publishes the keys it registered as these (ONEAPP_FL_NODES_ENROLLED); a SuperNode looks for its own.
fl_node_key_hash() {
    awk '{ print $1 " " $2 }' <<<"$1" | sha256sum | cut -d' ' -f1
}
