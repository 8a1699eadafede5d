# shellcheck shell=bash
# A small OneGate client over curl: GET /vm, GET /service, PUT /vm, with retries and a deadline.
#
# Credentials come from the context as one-context exports it (ONEGATE_ENDPOINT, VMID) and from its
# environment file (TOKENTXT). The token is sent in a header and never logged.

: "${FL_ONEGATE_DEADLINE:=300}"     # seconds a required OneGate call keeps retrying
: "${FL_ONEGATE_MAX_DELAY:=15}"     # longest pause between two tries

fl_onegate_load_env() {
    if [[ -z "${TOKENTXT:-}" && -r "${ENV_FILE}" ]]; then
        # shellcheck disable=SC1090
        . "${ENV_FILE}"
    fi
}

fl_onegate_configured() {
    [[ -n "${ONEGATE_ENDPOINT:-}" && -n "${TOKENTXT:-}" && -n "${VMID:-}" ]]
}

# One request, no retry. Prints the response body; fails on connection errors and HTTP >= 400.
fl_onegate_request() {
    local method=$1 path=$2 body=${3:-}
    local args=(--silent --show-error --fail --connect-timeout 5 --max-time 20 -X "${method}"
        -H "X-ONEGATE-TOKEN: ${TOKENTXT}" -H "X-ONEGATE-VMID: ${VMID}" -H "Accept: application/json")
    if [[ -n "${body}" ]]; then
        # The body travels as the form field data=..., URL-encoded as upstream's onegate client sends it
        # (one-apps context-linux src/usr/bin/onegate.rb: URI.encode_www_form(options)): sent raw, a '&'
        # in a value would start a new field (data=... replaces the update, type=2 makes it an erase).
        # Always end with a newline: OneGate's escape_attr leaves a last empty "KEY=" unterminated.
        printf '%s\n' "${body%$'\n'}" | curl "${args[@]}" --data-urlencode "data@-" "${ONEGATE_ENDPOINT%/}${path}"
    else
        curl "${args[@]}" "${ONEGATE_ENDPOINT%/}${path}"
    fi
}

# GET with retries until the deadline (seconds, default FL_ONEGATE_DEADLINE). Prints the JSON body.
fl_onegate_get() {
    local path=$1 deadline=${2:-${FL_ONEGATE_DEADLINE}} output
    fl_onegate_configured || return 1
    output=$(mktemp)
    # shellcheck disable=SC2317  # called through fl_retry_until
    _fl_onegate_get_once() { fl_onegate_request GET "$1" >"$2" 2>/dev/null; }
    if fl_retry_until "${deadline}" "${FL_ONEGATE_MAX_DELAY}" _fl_onegate_get_once "${path}" "${output}"; then
        cat "${output}"
        rm -f "${output}"
        return 0
    fi
    rm -f "${output}"
    return 1
}

# A value as OneGate takes it in a KEY=VALUE body: one line, unquoted (OneGate's escape_attr quotes
# it), without the characters escape_attr treats as structure: , [ ] \ and double quotes. Newlines and
# tabs become spaces, other control characters go; everything else (non-ASCII included) is kept.
fl_onegate_value() {
    local value=$1
    value=${value//$'\r\n'/ }
    value=${value//[$'\n\r\t']/ }
    value=$(printf '%s' "${value}" | LC_ALL=C tr -d '\000-\037\177')
    value=${value:0:65536}
    value=${value//,/;}
    value=${value//[/(}
    value=${value//]/)}
    value=${value//\\//}
    value=${value//\"/\'}
    printf '%s' "${value}"
}

# Build the PUT /vm body from KEY=VALUE arguments.
fl_onegate_body() {
    local pair key body=""
    for pair in "$@"; do
        key=${pair%%=*}
        [[ "${key}" =~ ^[A-Z][A-Z0-9_]*$ ]] || continue
        body+="${key}=$(fl_onegate_value "${pair#*=}")"$'\n'
    done
    printf '%s' "${body}"
}

# Merge KEY=VALUE attributes into this VM's USER_TEMPLATE. Retries until the deadline.
# Usage: fl_onegate_publish [--deadline S] KEY=VALUE...
fl_onegate_publish() {
    local deadline=${FL_ONEGATE_DEADLINE} body
    if [[ "${1:-}" == "--deadline" ]]; then
        deadline=$2
        shift 2
    fi
    if ! fl_onegate_configured; then
        fl_warn "OneGate is not configured (no TOKEN=YES in the context?): not publishing ${*%%=*}"
        return 1
    fi
    body=$(fl_onegate_body "$@")
    # shellcheck disable=SC2317  # called through fl_retry_until
    _fl_onegate_put_once() { fl_onegate_request PUT /vm "$1" >/dev/null 2>&1; }
    if fl_retry_until "${deadline}" "${FL_ONEGATE_MAX_DELAY}" _fl_onegate_put_once "${body}"; then
        return 0
    fi
    fl_warn "OneGate at ${ONEGATE_ENDPOINT} did not accept the update within ${deadline} s"
    return 1
}

# GET /service with every node's VM as GET /vms/:id shows it (USER_TEMPLATE, NICs) in place of the
# service document's minimal vm_info: what other VMs of the service published. (OpenNebula 7 can do
# this in one call with ?extended=true; /vms/:id works on every version.) Prints the JSON; returns 0
# when every node was read, 3 when some could not be (the document is printed all the same), 1 when
# the service itself could not be read.
fl_onegate_service_vms() {
    local deadline=${1:-${FL_ONEGATE_DEADLINE}} document ids id vm status=0
    document=$(fl_onegate_get /service "${deadline}") || return 1
    ids=$(jq -r '.SERVICE.roles[]?.nodes[]?.deploy_id' <<<"${document}") || return 1
    for id in ${ids}; do
        if ! vm=$(fl_onegate_get "/vms/${id}" 5) || ! jq -e '.VM.USER_TEMPLATE' >/dev/null 2>&1 <<<"${vm}"; then
            status=3
            continue
        fi
        document=$(jq --argjson id "${id}" --argjson vm "${vm}" \
            '(.SERVICE.roles[].nodes[] | select((.deploy_id | tostring) == ($id | tostring)) | .vm_info) = $vm' \
            <<<"${document}") || return 1
    done
    printf '%s\n' "${document}"
    return "${status}"
}
