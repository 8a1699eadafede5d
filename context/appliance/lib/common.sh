# shellcheck shell=bash
# Shared helpers of the Flower appliances: paths, logging, one-line failure reasons, status file, MOTD.
#
# Every path can be overridden through the environment so that the functions can be exercised on a
# build host (tests) as well as in the guest. Nothing here prints secrets: messages name parameters and
# files, never their contents.

: "${FL_APPLIANCE_DIR:=/etc/one-appliance}"
: "${FL_STATUS_FILE:=${FL_APPLIANCE_DIR}/status}"
: "${FL_PARAMS_FILE:=${FL_APPLIANCE_DIR}/flower/params.sh}"
: "${FL_BUILD_ENV:=${FL_APPLIANCE_DIR}/flower/build.env}"
: "${FL_LOG_DIR:=/var/log/one-appliance}"
: "${FL_ETC:=/etc/flower}"
: "${FL_STATE:=/var/lib/flower}"
: "${FL_VENV:=/opt/flower/venv}"
: "${FL_MOTD:=/etc/motd}"
: "${FL_RUN:=/run/one-appliance}"
: "${FL_REASON_FILE:=${FL_RUN}/failure-reason}"
: "${FL_PUBLISH_FILE:=${FL_RUN}/publish}"
: "${FL_SERVICE_USER:=flower}"
: "${FL_ADMIN_FLWR_HOME:=/root/.flwr}"
: "${ENV_FILE:=/var/run/one-context/one_env}"

# Build-time facts of the image (role, variant, accelerator, profile...), written by the provisioning.
fl_load_build_env() {
    if [[ -r "${FL_BUILD_ENV}" ]]; then
        # shellcheck disable=SC1090
        . "${FL_BUILD_ENV}"
    fi
    : "${FL_ROLE:=unknown}" "${FL_ACCEL:=cpu}" "${FL_PROFILE:=standard}"
}

# The role this VM runs: the image's (FL_ROLE of build.env), or on a SuperLink image whose context sets
# ONEAPP_FL_APPLIANCE_ROLE=monitoring the service's monitoring role (roles/monitoring.sh). Any other value
# is left to the parameter check of the configure stage (fl_params_apply: one line naming it).
fl_select_role() {
    [[ "${FL_ROLE}" == superlink ]] || return 0
    local chosen=${ONEAPP_FL_APPLIANCE_ROLE-}
    if [[ -z "${chosen}" && -r "${ENV_FILE}" ]]; then
        # shellcheck disable=SC1090
        chosen=$(. "${ENV_FILE}" >/dev/null 2>&1 && printf '%s' "${ONEAPP_FL_APPLIANCE_ROLE-}") || chosen=""
    fi
    if [[ "${chosen}" == monitoring ]]; then
        FL_ROLE=monitoring
    fi
}

fl_log() {
    printf '%s [%s] %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "${FL_STAGE:-appliance}" "$*" >&2
}

fl_warn() {
    fl_log "WARNING: $*"
}

# One printable line of at most max characters (default 300): OneGate attribute, MOTD, reason.
fl_one_line() {
    local text=$1 max=${2:-300}
    text=${text//$'\n'/ }
    text=${text//$'\r'/ }
    text=${text//$'\t'/ }
    text=$(printf '%s' "${text}" | LC_ALL=C tr -cd '[:print:]')
    printf '%s' "${text:0:max}"
}

# Fail the running stage with a one-line reason (kept for the status file, MOTD and OneGate).
fl_fail() {
    local reason
    reason=$(fl_one_line "$*")
    mkdir -p "$(dirname "${FL_REASON_FILE}")"
    printf '%s\n' "${reason}" >"${FL_REASON_FILE}"
    fl_log "ERROR: ${reason}"
    exit 1
}

# ERR trap for the stages: an unexpected failure still leaves a reason (the command text, which holds
# variable names, not their values).
fl_on_unexpected_error() {
    local status=$1 line=$2 command=$3
    if [[ ! -s "${FL_REASON_FILE}" ]]; then
        mkdir -p "$(dirname "${FL_REASON_FILE}")"
        fl_one_line "unexpected error: '${command}' exited ${status} (line ${line})" >"${FL_REASON_FILE}"
    fi
}

fl_status_get() {
    cat "${FL_STATUS_FILE}" 2>/dev/null || true
}

fl_status_set() {
    local status=$1
    mkdir -p "$(dirname "${FL_STATUS_FILE}")"
    printf '%s\n' "${status}" >"${FL_STATUS_FILE}.new"
    mv -f "${FL_STATUS_FILE}.new" "${FL_STATUS_FILE}"
}

# MOTD in the one-apps style: progress, failure with its reason, or "All set and ready to serve".
fl_motd_write() {
    local status=$1 reason=${2:-} title
    case "${FL_ROLE}" in
        superlink) title="Flower SuperLink appliance" ;;
        supernode) title="Flower SuperNode appliance" ;;
        monitoring) title="Flower monitoring (Prometheus) on the SuperLink image" ;;
        *) title="Flower appliance" ;;
    esac
    {
        printf '    ___   _ __    ___\n'
        printf '   / _ \\ | '\''_ \\  / _ \\   OpenNebula Service Appliance\n'
        printf '  | (_) || | | ||  __/   %s\n' "${title}"
        printf '   \\___/ |_| |_| \\___|   %s\n\n' "${FL_VARIANT:-}"
        case "${status}" in
            bootstrap_success)
                printf ' All set and ready to serve 8)\n'
                ;;
            *_failure)
                printf ' ERROR: the appliance stage %s failed:\n   %s\n' "${status%_failure}" "${reason}"
                printf ' Logs: %s/%s.log\n' "${FL_LOG_DIR}" "${status%_failure}"
                ;;
            *)
                printf ' Please wait: the appliance is being set up (%s).\n' "${status:-install}"
                printf ' Logs: %s/\n' "${FL_LOG_DIR}"
                ;;
        esac
        printf '\n'
    } >"${FL_MOTD}.new"
    mv -f "${FL_MOTD}.new" "${FL_MOTD}"
}

# Queue attributes for the final OneGate update of a successful bootstrap (KEY=VALUE, one per line).
fl_publish_later() {
    mkdir -p "$(dirname "${FL_PUBLISH_FILE}")"
    printf '%s\n' "$@" >>"${FL_PUBLISH_FILE}"
}

fl_user_exists() {
    id -u "${FL_SERVICE_USER}" >/dev/null 2>&1
}

# chown to the service user where it exists (in the guest; tests on a build host have no such user).
fl_chown_service_user() {
    if fl_user_exists; then
        chown "${FL_SERVICE_USER}:${FL_SERVICE_USER}" "$@"
    fi
}

# Write a file atomically with the given mode; content from stdin. Returns 0 when the content changed,
# 1 when it was already there. Every step is checked explicitly: callers use the status in conditions,
# where errexit does not apply.
fl_write_file() {
    local path=$1 mode=$2 tmp
    mkdir -p "$(dirname "${path}")" || fl_fail "could not create the directory of ${path}"
    tmp=$(mktemp "${path}.XXXXXX") || fl_fail "could not create a temporary file next to ${path}"
    if ! cat >"${tmp}" || ! chmod "${mode}" "${tmp}"; then
        rm -f "${tmp}"
        fl_fail "could not write ${path}"
    fi
    if [[ -f "${path}" ]] && cmp -s "${tmp}" "${path}"; then
        rm -f "${tmp}"
        chmod "${mode}" "${path}" || fl_fail "could not set the mode of ${path}"
        return 1
    fi
    mv -f "${tmp}" "${path}" || fl_fail "could not replace ${path}"
    return 0
}

# Print the file templates/NAME with each {{KEY}} replaced by VALUE, for each KEY=VALUE argument after
# NAME. A placeholder left without a value fails the stage: the template and its caller disagree.
fl_render() {
    local template="${FL_APPLIANCE_DIR}/templates/$1" text pair
    shift
    [[ -r "${template}" ]] || fl_fail "missing template ${template}"
    text=$(<"${template}")
    for pair in "$@"; do
        # Quoted replacement: bash 5.2 would otherwise expand & in the value to the placeholder.
        text=${text//"{{${pair%%=*}}}"/"${pair#*=}"}
    done
    if [[ "${text}" =~ \{\{[A-Za-z_][A-Za-z0-9_]*\}\} ]]; then
        fl_fail "template ${template}: ${BASH_REMATCH[0]} was given no value"
    fi
    printf '%s\n' "${text}"
}

fl_systemd_running() {
    [[ -d /run/systemd/system ]]
}

# Wait until a command succeeds, up to a deadline in seconds. Backoff 1, 2, 4 ... capped at max_delay.
fl_retry_until() {
    local deadline_s=$1 max_delay=$2
    shift 2
    local start delay=1 now
    start=$(date +%s)
    while true; do
        if "$@"; then
            return 0
        fi
        now=$(date +%s)
        if ((now - start >= deadline_s)); then
            return 1
        fi
        if ((now + delay - start > deadline_s)); then
            delay=$((deadline_s - (now - start)))
            ((delay > 0)) || delay=1
        fi
        sleep "${delay}"
        delay=$((delay * 2))
        ((delay <= max_delay)) || delay=${max_delay}
    done
}
