"""Prometheus (and Grafana provisioning) configuration for a Flower service, from the templates here.

    python -m monitoring.config prometheus --rules /etc/prometheus/flower-alerts.yml \
        --sd-file /etc/prometheus/flower-targets.json [--scheme https --ca-file ca.pem] > prometheus.yml
    python -m monitoring.config grafana-datasource --prometheus-url http://127.0.0.1:9090

Bad values: one line naming the option, exit status 2, nothing written.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import jinja2

HERE = Path(__file__).resolve().parent
DURATION = re.compile(r"^([0-9]+(ms|s|m|h))+$")  # Prometheus durations (model/time.go ParseDuration)


class ConfigError(Exception):
    pass


@dataclass(frozen=True)
class PrometheusSettings:
    rules_file: str
    sd_file: str = ""
    sd_url: str = ""
    service: str = "flower"
    scheme: str = "http"
    ca_file: str = ""
    scrape_interval: str = "15s"
    evaluation_interval: str = "15s"
    refresh_interval: str = "30s"
    node_exporter_port: int = 0

    def check(self) -> None:
        if bool(self.sd_file) == bool(self.sd_url):
            raise ConfigError("give exactly one of --sd-file (file_sd) and --sd-url (http_sd)")
        if self.sd_url and not re.fullmatch(r"https?://\S+", self.sd_url):
            raise ConfigError(f"--sd-url: {self.sd_url[:80]!r} is not an http(s) URL")
        if self.scheme not in ("http", "https"):
            raise ConfigError(f"--scheme: {self.scheme!r} is not http or https")
        if self.scheme == "https" and not self.ca_file:
            raise ConfigError("--scheme https needs --ca-file (the appliance's CA)")
        for name in ("scrape_interval", "evaluation_interval", "refresh_interval"):
            if not DURATION.match(getattr(self, name)):
                raise ConfigError(
                    f"--{name.replace('_', '-')}: {getattr(self, name)!r} is not a duration like 15s"
                )
        if not 0 <= self.node_exporter_port < 65536:
            raise ConfigError(f"--node-exporter-port: {self.node_exporter_port} is not a TCP port")
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", self.service):
            raise ConfigError(
                f"--service: {self.service[:60]!r} has characters other than letters, digits, _ . -"
            )


def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(HERE)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
    )


def render_prometheus(settings: PrometheusSettings) -> str:
    settings.check()
    return (
        _environment()
        .get_template("prometheus/prometheus.yml.j2")
        .render(sd="file" if settings.sd_file else "http", **settings.__dict__)
    )


def render_grafana_datasource(prometheus_url: str) -> str:
    if not re.fullmatch(r"https?://\S+", prometheus_url):
        raise ConfigError(f"--prometheus-url: {prometheus_url[:80]!r} is not an http(s) URL")
    return (
        _environment()
        .get_template("grafana/provisioning/datasource.yml.j2")
        .render(prometheus_url=prometheus_url)
    )


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m monitoring.config", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    prometheus = commands.add_parser("prometheus")
    prometheus.add_argument("--rules", required=True)
    prometheus.add_argument("--sd-file", default="")
    prometheus.add_argument("--sd-url", default="")
    prometheus.add_argument("--service", default="flower")
    prometheus.add_argument("--scheme", default="http")
    prometheus.add_argument("--ca-file", default="")
    prometheus.add_argument("--scrape-interval", default="15s")
    prometheus.add_argument("--evaluation-interval", default="15s")
    prometheus.add_argument("--refresh-interval", default="30s")
    prometheus.add_argument("--node-exporter-port", type=int, default=0)
    grafana = commands.add_parser("grafana-datasource")
    grafana.add_argument("--prometheus-url", default="http://127.0.0.1:9090")
    options = parser.parse_args(argv)
    try:
        if options.command == "prometheus":
            text = render_prometheus(
                PrometheusSettings(
                    rules_file=options.rules, sd_file=options.sd_file, sd_url=options.sd_url,
                    service=options.service, scheme=options.scheme, ca_file=options.ca_file,
                    scrape_interval=options.scrape_interval, evaluation_interval=options.evaluation_interval,
                    refresh_interval=options.refresh_interval, node_exporter_port=options.node_exporter_port,
                )
            )  # fmt: skip
        else:
            text = render_grafana_datasource(options.prometheus_url)
    except ConfigError as error:
        sys.stderr.write(f"monitoring config: {error}\n")
        return 2
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
