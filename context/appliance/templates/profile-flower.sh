# shellcheck shell=sh
# Flower appliance: the flwr CLI of the appliance's virtualenv, without telemetry or update checks.
export PATH="{{VENV}}/bin:${PATH}"
export FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1
