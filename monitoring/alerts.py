"""The alert rules of a Flower service, rendered from ``prometheus/alerts.yml.j2`` with their thresholds.

    python -m monitoring.alerts > alerts.yml                        # the shipped defaults
    python -m monitoring.alerts --stalled-after 45m --dropped-for 5m > flower-alerts.yml
    python -m monitoring.alerts --check                             # the committed file is current

The thresholds live here only: ``prometheus/alerts.yml`` is this module's output with its defaults (a unit
test and ``--check`` keep the two equal), so a site with longer rounds, or a test that cannot wait 15
minutes for a stall, renders the same rules with other numbers. Durations are Prometheus durations
(``model/time.go`` ParseDuration: ``90s``, ``15m``, ``1h30m``). Bad values: one line naming the option,
exit status 2, nothing written.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import jinja2

HERE = Path(__file__).resolve().parent
SHIPPED = HERE / "prometheus" / "alerts.yml"
TEMPLATE = "prometheus/alerts.yml.j2"
DURATION = re.compile(r"^(?:[0-9]+(?:ms|s|m|h|d|w|y))+$")
UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}


class AlertsError(Exception):
    """A threshold that is out of range or not a duration: one line for the user."""


def duration_seconds(text: str) -> float:
    """Seconds of a Prometheus duration (``1h30m`` -> 5400)."""
    if not DURATION.match(text):
        raise AlertsError(f"{text[:40]!r} is not a Prometheus duration like 90s, 15m or 1h30m")
    return sum(int(n) * UNIT_SECONDS[unit] for n, unit in re.findall(r"([0-9]+)(ms|s|m|h|d|w|y)", text))


@dataclass(frozen=True)
class Thresholds:
    """Every number of the rules. The defaults suit minute-scale rounds (docs/monitoring.md)."""

    stalled_after: str = "15m"  # no round finished (nor the run started) for this long while it is active
    stalled_for: str = "1m"
    round_time_factor: float = 2.0  # last round > factor x the run's median round
    loss_factor: float = 1.5  # last loss > factor x the run's best
    min_rounds: int = 3  # both comparisons start at this round
    dropped_window: str = "1h"  # fewer SuperNodes connected than the most in this window
    dropped_for: str = "2m"
    disconnected_for: str = "5m"
    target_down_for: str = "2m"
    refusal_window: str = "10m"
    source_down_for: str = "5m"

    def check(self) -> None:
        for item in fields(self):
            value = getattr(self, item.name)
            option = "--" + item.name.replace("_", "-")
            if item.type == "str":
                try:
                    seconds = duration_seconds(value)
                except AlertsError as error:
                    raise AlertsError(f"{option}: {error}") from None
                if seconds <= 0 and not item.name.endswith("_for"):
                    raise AlertsError(f"{option}: must be longer than 0s")
        for name in ("round_time_factor", "loss_factor"):
            if not 1.0 < getattr(self, name) <= 100.0:
                raise AlertsError(f"--{name.replace('_', '-')}: must be above 1 and at most 100")
        if not 1 <= self.min_rounds <= 10000:
            raise AlertsError("--min-rounds: must be within 1..10000")


def _number(value: float) -> str:
    return f"{value:g}"


def render(thresholds: Thresholds | None = None) -> str:
    """The rules file for ``thresholds`` (the defaults when None)."""
    thresholds = thresholds or Thresholds()
    thresholds.check()
    values = asdict(thresholds)
    values["stalled_after_s"] = _number(duration_seconds(thresholds.stalled_after))
    values["round_time_factor"] = _number(thresholds.round_time_factor)
    values["loss_factor"] = _number(thresholds.loss_factor)
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(HERE)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        variable_start_string="<<",
        variable_end_string=">>",
        autoescape=False,
    )
    return environment.get_template(TEMPLATE).render(**values)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m monitoring.alerts", description=__doc__.splitlines()[0])
    defaults = Thresholds()
    for item in fields(Thresholds):
        kind = {"str": str, "float": float, "int": int}[str(item.type)]
        parser.add_argument(
            "--" + item.name.replace("_", "-"), type=kind, default=getattr(defaults, item.name),
            help=f"default {getattr(defaults, item.name)}",
        )  # fmt: skip
    parser.add_argument("--check", action="store_true", help=f"fail when {SHIPPED.name} is not the default")
    try:
        options = parser.parse_args(argv)
    except SystemExit as stop:  # argparse printed its one line (e.g. a float that is not a number)
        return int(stop.code or 0)
    try:
        chosen = Thresholds(**{item.name: getattr(options, item.name) for item in fields(Thresholds)})
        if options.check:
            if chosen != defaults:
                raise AlertsError("--check compares the shipped file with the defaults: give no thresholds")
            if SHIPPED.read_text() != render(defaults):
                raise AlertsError(f"{SHIPPED} is stale: run python -m monitoring.alerts > {SHIPPED}")
            return 0
        text = render(chosen)
    except AlertsError as error:
        sys.stderr.write(f"monitoring alerts: {error}\n")
        return 2
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
