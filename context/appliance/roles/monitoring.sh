# shellcheck shell=bash
# The monitoring role: the service template's third role, on the SuperLink image, chosen at boot with
# ONEAPP_FL_APPLIANCE_ROLE=monitoring (as OpenNebula's OneKE appliance picks a node's role from its
# context on one image). No SuperLink, no CA: Prometheus with the shipped rules scraping every VM of the
# OneFlow service, whose targets monitoring.targets keeps current from OneGate while OneFlow scales it
# (docs/monitoring.md "The monitoring role"), and Grafana with the dashboard where the image carries it.
#
#   flower-targets.service     python -m monitoring.targets file (user flower, the VM's OneGate token)
#   flower-prometheus.service  Prometheus (user prometheus), 127.0.0.1:9090, data in FL_MONITORING_STATE
#   grafana-server.service     only where the image has Grafana (FL_GRAFANA=yes), 127.0.0.1:3000

FL_MONITORING_UNITS=(flower-targets.service flower-prometheus.service)
: "${FL_MONITORING_HOME:=/opt/flower/monitoring}"
: "${FL_MONITORING_ETC:=${FL_ETC}/monitoring}"
: "${FL_MONITORING_STATE:=/var/lib/flower-monitoring}"
: "${FL_MONITORING_PYTHON:=/usr/bin/python3}"
: "${FL_PROMETHEUS_LISTEN:=127.0.0.1:9090}"
: "${FL_PROMETHEUS_USER:=prometheus}"
: "${FL_TARGETS_INTERVAL:=15}"
: "${FL_GRAFANA:=no}"
: "${FL_GRAFANA_PROVISIONING:=/etc/grafana/provisioning}"
: "${FL_GRAFANA_DASHBOARDS:=/var/lib/grafana/dashboards/flower}"
: "${FL_GRAFANA_DROPIN:=/etc/systemd/system/grafana-server.service.d/50-flower.conf}"

monitoring_install() {
    fl_install_units "${FL_MONITORING_UNITS[@]}"
    # The distribution's own Prometheus and Grafana services stay off: the role runs its own units with
    # its own configuration, and only on a VM booted in that role.
    if command -v systemctl >/dev/null 2>&1; then
        local unit
        for unit in prometheus.service grafana-server.service; do
            systemctl disable "${unit}" >/dev/null 2>&1 || true
            if fl_systemd_running; then
                systemctl stop "${unit}" >/dev/null 2>&1 || true
            fi
        done
    fi
}

# The appliance CA the SuperLink publishes (ONEAPP_FL_CA_CERT, base64 PEM) into FILE, waiting for it
# up to DEADLINE seconds (the role's parent is the SuperLink: normally it is there already).
monitoring_fetch_ca() {
    local file=$1 deadline=$2 start document encoded pem
    start=${SECONDS}
    while :; do
        encoded=""
        if document=$(fl_onegate_service_vms 30) || [[ -n "${document:-}" ]]; then
            encoded=$(jq -r '[.SERVICE.roles[]? | select(.name == "superlink") | .nodes[]?.vm_info.VM.USER_TEMPLATE.ONEAPP_FL_CA_CERT // empty | select(. != "")] | first // empty' <<<"${document}" 2>/dev/null || true)
        fi
        [[ -z "${encoded}" ]] || break
        ((SECONDS - start < deadline)) ||
            fl_fail "ONEAPP_FL_METRICS_TLS=YES: the SuperLink of the service published no appliance CA (ONEAPP_FL_CA_CERT) within ${deadline} s; it is needed to verify the metrics' certificates (is ONEAPP_FL_TLS=YES on the SuperLink?)"
        sleep 5
    done
    pem=$(printf '%s' "${encoded}" | base64 -d 2>/dev/null) ||
        fl_fail "ONEAPP_FL_CA_CERT published by the SuperLink is not valid base64"
    openssl x509 -noout 2>/dev/null <<<"${pem}" ||
        fl_fail "ONEAPP_FL_CA_CERT published by the SuperLink is not a PEM certificate"
    printf '%s\n' "${pem}" | fl_write_file "${file}" 0644 || true
}

monitoring_configure() {
    local document service_id scheme=http ca_file="" config changed=no
    fl_onegate_configured ||
        fl_fail "ONEAPP_FL_APPLIANCE_ROLE=monitoring needs OneGate (TOKEN=YES in the context): it finds the VMs to scrape through it"
    [[ -x "${FL_MONITORING_PYTHON}" && -r "${FL_MONITORING_HOME}/monitoring/targets.py" ]] ||
        fl_fail "ONEAPP_FL_APPLIANCE_ROLE=monitoring: this image has no monitoring role (${FL_MONITORING_HOME}, ${FL_MONITORING_PYTHON})"
    command -v prometheus >/dev/null 2>&1 ||
        fl_fail "ONEAPP_FL_APPLIANCE_ROLE=monitoring: this image has no Prometheus"
    document=$(fl_onegate_get /service 60) ||
        fl_fail "ONEAPP_FL_APPLIANCE_ROLE=monitoring runs in a OneFlow service, and OneGate's GET /service answered nothing at ${ONEGATE_ENDPOINT} (is this VM part of a service?)"
    service_id=$(jq -r '.SERVICE.id // empty' <<<"${document}" 2>/dev/null || true)
    [[ "${service_id}" =~ ^[0-9]+$ ]] ||
        fl_fail "ONEAPP_FL_APPLIANCE_ROLE=monitoring: OneGate's GET /service has no service id: this VM is not part of a OneFlow service"

    install -d -m 0755 "${FL_MONITORING_ETC}" "${FL_MONITORING_STATE}"
    install -d -m 0750 "${FL_MONITORING_STATE}/prometheus"
    fl_chown_service_user "${FL_MONITORING_STATE}"
    if id -u "${FL_PROMETHEUS_USER}" >/dev/null 2>&1; then
        chown "${FL_PROMETHEUS_USER}:${FL_PROMETHEUS_USER}" "${FL_MONITORING_STATE}/prometheus"
    fi
    if [[ "${ONEAPP_FL_METRICS_TLS}" == YES ]]; then
        scheme=https
        ca_file="${FL_MONITORING_ETC}/ca.pem"
        monitoring_fetch_ca "${ca_file}" "${FL_START_DEADLINE:-300}"
    else
        rm -f "${FL_MONITORING_ETC}/ca.pem"
    fi

    # monitoring.targets reads OneGate with this VM's token (user flower, never on a command line).
    if printf '%s\n' "${TOKENTXT}" | fl_write_file "${FL_MONITORING_ETC}/onegate.token" 0600; then changed=yes; fi
    fl_chown_service_user "${FL_MONITORING_ETC}/onegate.token"
    if {
        printf 'ONEGATE_ENDPOINT=%s\nVMID=%s\n' "${ONEGATE_ENDPOINT}" "${VMID}"
        printf 'FL_TARGETS_SCHEME=%s\nFL_TARGETS_PORT=%s\nFL_TARGETS_INTERVAL=%s\n' "${scheme}" \
            "${ONEAPP_FL_METRICS_PORT}" "${FL_TARGETS_INTERVAL}"
        printf 'FL_TARGETS_FILE=%s\nFL_MONITORING_HOME=%s\nFL_MONITORING_PYTHON=%s\n' \
            "${FL_MONITORING_STATE}/targets.json" "${FL_MONITORING_HOME}" "${FL_MONITORING_PYTHON}"
        printf 'FL_PROMETHEUS_CONFIG=%s\nFL_PROMETHEUS_DATA=%s\nFL_PROMETHEUS_LISTEN=%s\n' \
            "${FL_MONITORING_ETC}/prometheus.yml" "${FL_MONITORING_STATE}/prometheus" "${FL_PROMETHEUS_LISTEN}"
    } | fl_write_file "${FL_MONITORING_ETC}/monitoring.env" 0644; then
        changed=yes
    fi

    local args=(prometheus --rules "${FL_MONITORING_HOME}/monitoring/prometheus/alerts.yml"
        --sd-file "${FL_MONITORING_STATE}/targets.json" --service "flower-${service_id}" --scheme "${scheme}")
    [[ -z "${ca_file}" ]] || args+=(--ca-file "${ca_file}")
    config=$(PYTHONPATH="${FL_MONITORING_HOME}" "${FL_MONITORING_PYTHON}" -m monitoring.config "${args[@]}" 2>&1) ||
        fl_fail "could not render the Prometheus configuration: $(fl_one_line "${config}" 200)"
    if printf '%s\n' "${config}" | fl_write_file "${FL_MONITORING_ETC}/prometheus.yml" 0644; then changed=yes; fi
    if command -v promtool >/dev/null 2>&1; then
        local said
        said=$(promtool check config "${FL_MONITORING_ETC}/prometheus.yml" 2>&1) ||
            fl_fail "promtool check config refuses ${FL_MONITORING_ETC}/prometheus.yml: $(fl_one_line "${said}" 200)"
    fi
    if [[ "${changed}" == yes ]]; then
        fl_mark_restart flower-targets.service
        fl_mark_restart flower-prometheus.service
    fi
    [[ "${FL_GRAFANA}" != yes ]] || monitoring_configure_grafana
}

# Grafana's data source (this VM's Prometheus) and the dashboard, as provisioning files.
monitoring_configure_grafana() {
    local datasource
    datasource=$(PYTHONPATH="${FL_MONITORING_HOME}" "${FL_MONITORING_PYTHON}" -m monitoring.config grafana-datasource \
        --prometheus-url "http://${FL_PROMETHEUS_LISTEN}" 2>&1) ||
        fl_fail "could not render Grafana's data source: $(fl_one_line "${datasource}" 200)"
    printf '%s\n' "${datasource}" | fl_write_file "${FL_GRAFANA_PROVISIONING}/datasources/flower.yml" 0644 || true
    fl_write_file "${FL_GRAFANA_PROVISIONING}/dashboards/flower.yml" 0644 \
        <"${FL_MONITORING_HOME}/monitoring/grafana/provisioning/dashboards.yml" || true
    fl_write_file "${FL_GRAFANA_DASHBOARDS}/flower-dashboard.json" 0644 \
        <"${FL_MONITORING_HOME}/monitoring/grafana/flower-dashboard.json" || true
    # Loopback only, like Prometheus (reach it with an SSH tunnel).
    printf '[Service]\nEnvironment=GF_SERVER_HTTP_ADDR=127.0.0.1\n' |
        fl_write_file "${FL_GRAFANA_DROPIN}" 0644 || true
}

monitoring_bootstrap() {
    local url="http://${FL_PROMETHEUS_LISTEN}" count
    fl_systemd_running || return 0
    # The stack runs only in this role: a VM that was a SuperLink before keeps none of its services.
    systemctl stop flower-superlink.service flower-fleet-proxy.service flower-keysync.service \
        flower-metrics.service flower-nodecount.service flower-job.service >/dev/null 2>&1 || true
    systemctl daemon-reload
    fl_unit_apply flower-targets.service
    # shellcheck disable=SC2317  # called through fl_retry_until
    _fl_targets_written() { [[ -s "${FL_MONITORING_STATE}/targets.json" ]]; }
    fl_retry_until 120 5 _fl_targets_written ||
        fl_fail "monitoring.targets wrote no targets within 120 s: $(journalctl -u flower-targets.service -n 5 --no-pager -o cat 2>/dev/null | tail -n 1)"
    fl_unit_apply flower-prometheus.service
    fl_wait_http 120 "${url}/-/ready" ||
        fl_fail "Prometheus did not answer on ${FL_PROMETHEUS_LISTEN} within 120 s: $(fl_unit_last_error flower-prometheus.service)"
    if [[ "${FL_GRAFANA}" == yes ]]; then
        systemctl daemon-reload
        systemctl restart grafana-server.service || fl_fail "Grafana did not start: $(fl_unit_last_error grafana-server.service)"
    fi
    count=$(jq '[.[].targets[]] | length' "${FL_MONITORING_STATE}/targets.json" 2>/dev/null || echo '?')
    fl_publish_later "ONEAPP_FL_PROMETHEUS=${url} (on the monitoring VM; ${count} targets)"
}
