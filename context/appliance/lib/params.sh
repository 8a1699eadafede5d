# shellcheck shell=bash
# ONEAPP_* parameters: defaults and validation against the generated declaration.
#
# The declaration (FL_PARAMS and the FL_PARAM_* associative arrays, generated from images/params.yaml by
# factory/model/params.py) is sourced by the caller at global scope: `declare -A` inside a function would make
# the arrays local to it.
#
# fl_params_apply sets every declared parameter that the context leaves empty to its default, checks
# each value against its type, options, range and mandatory flag, normalises booleans to YES/NO and
# exports the result. The first bad value fails with a message naming the parameter and the value
# (the value is not shown for secret types).

# Types whose values are never echoed back (they may hold keys or passwords).
fl_param_is_secret() {
    case "$1" in
        password | text64) return 0 ;;
        *) return 1 ;;
    esac
}

fl_param_shown_value() {
    local name=$1 value=$2 type=${FL_PARAM_TYPE[$1]-text}
    if fl_param_is_secret "${type}"; then
        printf '(value not shown)'
    else
        printf "'%s'" "$(fl_one_line "${value}" 60)"
    fi
}

fl_is_integer() {
    [[ "$1" =~ ^-?[0-9]+$ ]]
}

fl_is_float() {
    [[ "$1" =~ ^-?[0-9]+(\.[0-9]+)?$ ]]
}

# Most digits of a whole number the appliance accepts: bash arithmetic is 64-bit and wraps silently
# (18446744073709560708 is 9092 to it), so longer numbers are refused before any arithmetic sees them.
FL_MAX_DIGITS=18

# A whole number in canonical decimal form: leading zeros dropped (bash arithmetic would read 09093 as
# octal and fail), "-0" is 0. Fails when it is not a whole number or has more than FL_MAX_DIGITS digits.
fl_decimal() {
    local value=$1 sign="" digits
    fl_is_integer "${value}" || return 1
    if [[ "${value}" == -* ]]; then
        sign=-
        value=${value#-}
    fi
    digits=${value#"${value%%[!0]*}"}
    [[ -n "${digits}" ]] || { printf '0' && return 0; }
    ((${#digits} <= FL_MAX_DIGITS)) || return 1
    printf '%s%s' "${sign}" "${digits}"
}

# The port sshd listens on in every appliance: no Flower service may take it.
FL_SSH_PORT=22

# Check a port parameter (after fl_params_apply): 1-65535 and not the SSH port. Prints the problem and
# returns 1 otherwise. Extra arguments are NAME=what pairs of ports this one must not share.
fl_param_port_problem() {
    local name=$1 value other shown
    shift
    shown=$(fl_one_line "${!name-}" 60)
    if ! value=$(fl_decimal "${!name-}") || ((value < 1 || value > 65535)); then
        printf "%s: '%s' is not a port number (1-65535)" "${name}" "${shown}"
        return 1
    fi
    if ((value == FL_SSH_PORT)); then
        printf '%s: %s is the SSH port (sshd listens on it in every appliance): choose another port' \
            "${name}" "${value}"
        return 1
    fi
    for other in "$@"; do
        if [[ "$(fl_decimal "${!other-}" 2>/dev/null)" == "${value}" ]]; then
            printf '%s and %s must differ (both are %s)' "${name}" "${other}" "${value}"
            return 1
        fi
    done
    return 0
}

# Validate one value. Prints the normalised value; on a bad value prints the problem and returns 1.
fl_param_check() {
    local name=$1 value=$2
    local type=${FL_PARAM_TYPE[$name]-} options=${FL_PARAM_OPTIONS[$name]-}
    local shown option low high item
    shown=$(fl_param_shown_value "${name}" "${value}")
    case "${type}" in
        boolean)
            case "${value^^}" in
                YES | NO) printf '%s' "${value^^}" ;;
                *) printf '%s: %s is not YES or NO' "${name}" "${shown}" && return 1 ;;
            esac
            ;;
        number)
            fl_is_integer "${value}" || { printf '%s: %s is not a whole number' "${name}" "${shown}" && return 1; }
            fl_decimal "${value}" ||
                { printf '%s: %s is too large (at most %s digits)' "${name}" "${shown}" "${FL_MAX_DIGITS}" && return 1; }
            ;;
        number-float)
            fl_is_float "${value}" || { printf '%s: %s is not a number' "${name}" "${shown}" && return 1; }
            printf '%s' "${value}"
            ;;
        range | range-float)
            low=${options%%..*}
            high=${options##*..}
            if [[ "${type}" == range ]]; then
                fl_is_integer "${value}" || { printf '%s: %s is not a whole number' "${name}" "${shown}" && return 1; }
                value=$(fl_decimal "${value}") ||
                    { printf '%s: %s is outside the range %s..%s' "${name}" "${shown}" "${low}" "${high}" && return 1; }
            else
                fl_is_float "${value}" || { printf '%s: %s is not a number' "${name}" "${shown}" && return 1; }
            fi
            if ! awk -v v="${value}" -v lo="${low}" -v hi="${high}" 'BEGIN { exit !(v + 0 >= lo + 0 && v + 0 <= hi + 0) }'; then
                printf '%s: %s is outside the range %s..%s' "${name}" "${shown}" "${low}" "${high}"
                return 1
            fi
            printf '%s' "${value}"
            ;;
        list)
            IFS=',' read -r -a _fl_options <<<"${options}"
            for option in "${_fl_options[@]}"; do
                if [[ "${value}" == "${option}" ]]; then
                    printf '%s' "${value}"
                    return 0
                fi
            done
            printf '%s: %s is not one of %s' "${name}" "${shown}" "${options//,/, }"
            return 1
            ;;
        list-multiple)
            IFS=',' read -r -a _fl_options <<<"${options}"
            IFS=',' read -r -a _fl_items <<<"${value}"
            for item in "${_fl_items[@]}"; do
                for option in "${_fl_options[@]}"; do
                    [[ "${item}" == "${option}" ]] && continue 2
                done
                printf "%s: '%s' is not one of %s" "${name}" "$(fl_one_line "${item}" 60)" "${options//,/, }"
                return 1
            done
            printf '%s' "${value}"
            ;;
        text64)
            if ! printf '%s' "${value}" | base64 -d >/dev/null 2>&1; then
                printf '%s: %s is not valid base64' "${name}" "${shown}"
                return 1
            fi
            printf '%s' "${value}"
            ;;
        text | password)
            printf '%s' "${value}"
            ;;
        *)
            printf "%s: unknown parameter type '%s' in %s" "${name}" "${type}" "${FL_PARAMS_FILE}"
            return 1
            ;;
    esac
}

# Apply defaults, validate and export every declared parameter. Fails the stage on the first bad value.
# Parameters whose values another check owns, space-separated (a role sets it at global scope): a bad one
# is kept as given, with a warning, instead of failing the stage, and that check reports it. The
# SuperLink's job parameters: flower-job --check, so that a bad job fails the job, not the appliance.
FL_PARAMS_DEFERRED=${FL_PARAMS_DEFERRED:-}

fl_params_apply() {
    local name value mandatory checked
    if [[ -z "${FL_PARAMS:-}" ]]; then
        fl_fail "no parameter declaration loaded from ${FL_PARAMS_FILE}"
    fi
    for name in ${FL_PARAMS}; do
        value=${!name-}
        if [[ -z "${value}" ]]; then
            mandatory=${FL_PARAM_MANDATORY[$name]-NO}
            if [[ "${mandatory^^}" == YES || "${mandatory,,}" == true ]]; then
                fl_fail "${name}: mandatory parameter is not set"
            fi
            value=${FL_PARAM_DEFAULT[$name]-}
        fi
        if [[ -n "${value}" ]]; then
            if ! checked=$(fl_param_check "${name}" "${value}"); then
                [[ " ${FL_PARAMS_DEFERRED} " == *" ${name} "* ]] || fl_fail "${checked}"
                fl_warn "${checked} (left to its own check)"
                checked=${value}
            fi
            value=${checked}
        fi
        printf -v "${name}" '%s' "${value}"
        # shellcheck disable=SC2163  # exporting the variable named by $name
        export "${name}"
    done
}

# Decode a text64 parameter into a file (mode 0600 by default). Fails naming the parameter.
fl_param_decode_to() {
    local name=$1 path=$2 mode=${3:-0600} decoded
    decoded=$(printf '%s' "${!name}" | base64 -d 2>/dev/null) || fl_fail "${name}: is not valid base64"
    printf '%s\n' "${decoded}" | fl_write_file "${path}" "${mode}" || true
}
