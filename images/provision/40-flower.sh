#!/usr/bin/env bash
# Flower: the non-root service user and a pinned virtualenv owned by root with flwr and the ML
# framework baked in (the appliances never install anything at run time).
set -euo pipefail
FL_PROVISION_STEP=40-flower
# shellcheck source-path=SCRIPTDIR source=lib/distro.sh
. "$(dirname "$0")/lib/distro.sh"

venv=/opt/flower/venv
# The metrics exporter (context/appliance/bin/flower-metrics) runs with this venv's Python; same pin as
# pyproject.toml (tests/appliance/test_metrics_wiring.py keeps them equal).
metrics_package="prometheus-client==0.26.0"
python=$(distro_python)
[[ -x "${python}" ]] || die "no ${python} for the Flower virtualenv"

if ! id -u flower >/dev/null 2>&1; then
    useradd --system --user-group --home-dir /var/lib/flower --no-create-home \
        --shell "$(distro_nologin_shell)" --comment "Flower appliance services" flower
fi
install -d -m 0750 -o flower -g flower /var/lib/flower

log "creating ${venv} with flwr==${FL_FLOWER_VERSION:?} ${FL_FRAMEWORK_PACKAGES:-}"
rm -rf "${venv}"
"${python}" -m venv "${venv}"
# FL_FRAMEWORK_PACKAGES is a space-separated list of pinned requirements (pip options allowed, e.g.
# --extra-index-url); FL_FRAMEWORK_INDEX_URL adds an extra index (CPU or CUDA builds).
pip_args=(--no-cache-dir --disable-pip-version-check --no-input --progress-bar off)
if [[ -n "${FL_FRAMEWORK_INDEX_URL:-}" ]]; then
    pip_args+=(--extra-index-url "${FL_FRAMEWORK_INDEX_URL}")
fi
# shellcheck disable=SC2086  # FL_FRAMEWORK_PACKAGES is a word list on purpose
"${venv}/bin/pip" install "${pip_args[@]}" "flwr==${FL_FLOWER_VERSION}" "${metrics_package}" \
    ${FL_FRAMEWORK_PACKAGES:-}
"${venv}/bin/pip" check
installed=$("${venv}/bin/python" -c 'import importlib.metadata as m; print(m.version("flwr"))')
[[ "${installed}" == "${FL_FLOWER_VERSION}" ]] || die "flwr ${installed} installed, ${FL_FLOWER_VERSION} wanted"
"${venv}/bin/python" -c 'import prometheus_client' || die "${metrics_package} is not importable in ${venv}"

chown -R root:root /opt/flower
chmod -R go-w /opt/flower

# Component versions for the image manifest.
install -d -m 0755 /etc/one-appliance/flower
"${venv}/bin/python" - <<'PYEOF' >/etc/one-appliance/flower/components.json
import importlib.metadata as metadata
import json
import platform

packages = {dist.metadata["Name"].lower(): dist.version for dist in metadata.distributions()}
print(json.dumps({"flwr": packages.get("flwr"), "python": platform.python_version(),
                  "packages": dict(sorted(packages.items()))}, indent=2))
PYEOF
