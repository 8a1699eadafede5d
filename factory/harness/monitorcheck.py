"""The release pair's monitoring-role check (issue 12, "The factory proves it").

A pair deployed with the service template's monitoring role on (``service_template(monitoring=True)``:
one VM of the SuperLink image in ``ONEAPP_FL_APPLIANCE_ROLE=monitoring``) runs Prometheus on that VM.
After the rounds the harness asks it, with curl on the monitoring VM through the deployment's SSH key
(Prometheus listens on the VM's loopback, as :func:`factory.harness.pairtest.scrape_service_metrics`
reads the exporters), through Prometheus' HTTP API (``/api/v1/targets``, ``/api/v1/query_range``):

1. every VM of the SuperLink and SuperNode roles is an active target, by its ``one_vm_id`` label, and up;
2. every panel query of the committed Grafana dashboard (``monitoring/grafana/flower-dashboard.json``,
   variables replaced as Grafana does with every run selected) runs as the range query Grafana sends,
   over the pair's federations, and the panels that every pair has data for return data;
3. the loss-per-round panel returns, for every federation of the pair's results that has a run id and
   evaluation losses, exactly those rounds and losses.

The check is ``monitoring/monitoring_role`` of the pair's record; the compatibility report shows it in
its "monitoring role" column (``not run`` for the pairs deployed without the role).
"""

from __future__ import annotations

import ipaddress
import json
import math
import shlex
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hostkit.errors import FactoryError
from hostkit.paths import MONITORING_DIR

CHECK = "monitoring_role"
TASK = "monitoring"
ROLE = "monitoring"
PROMETHEUS = "http://127.0.0.1:9090"  # on the monitoring VM (roles/monitoring.sh FL_PROMETHEUS_LISTEN)
DASHBOARD = MONITORING_DIR / "grafana" / "flower-dashboard.json"
LOSS_PANEL = "Loss per round"
# Panels a pair may show empty: sources not every pair has (an accuracy for classifiers only, FF-CLIENT
# sample counts, GPUs, refused or rotated keys while the range query looked). docs/monitoring.md lists them.
MAY_BE_EMPTY = frozenset(
    {
        "Accuracy per round",
        "Samples per task",
        "GPU utilisation",
        "GPU memory used",
        "Refused SuperNode activations",
        "Key sync events",
    }
)
SCRAPED_ROLES = ("superlink", "supernode")
RATE_INTERVAL = "1m"  # Grafana's $__rate_interval for a 15 s scrape interval (4 x scrape)

# (method, path, params) -> the parsed JSON of Prometheus' answer (its "data"), raising FactoryError.
PrometheusGet = Callable[[str, dict[str, str]], Any]


def metrics_context(tls: bool) -> dict[str, dict[str, str]]:
    """The CONTEXT the harness adds to each role of the monitoring pair for its metrics: with ``tls``
    (the pair's security mode has Flower TLS), ``ONEAPP_FL_METRICS_TLS=YES`` on the SuperLink and the
    SuperNodes, so every exporter serves HTTPS with the appliance CA and the monitoring role (which
    ``service_template`` gives the SuperLink's METRICS_TLS) scrapes them with that CA alone."""
    value = {"ONEAPP_FL_METRICS_TLS": "YES"} if tls else {}
    return {role: dict(value) for role in SCRAPED_ROLES}


def network_cidrs(cloud: Any) -> str:
    """The CIDRs of the IPv4 address ranges of the cloud's network (``vn.info``'s AR_POOL), comma
    separated: what the other roles' ONEAPP_FL_METRICS_ALLOW must admit for the monitoring VM to scrape
    them (it takes its address from that network)."""
    network = cloud.one.vn.info(cloud.network_id())
    pool = getattr(network, "AR_POOL", None)
    ranges = getattr(pool, "AR", None) or []
    ranges = ranges if isinstance(ranges, list) else [ranges]
    cidrs: list[str] = []
    for address_range in ranges:
        first, size = getattr(address_range, "IP", None), getattr(address_range, "SIZE", None)
        if not first or not size:
            continue
        start = ipaddress.IPv4Address(str(first))
        end = start + int(size) - 1
        cidrs += [str(net) for net in ipaddress.summarize_address_range(start, end)]
    if not cidrs:
        raise FactoryError(
            f"network {cloud.network_id()} has no IPv4 address range: the monitoring role's VM could not be "
            "admitted to the metrics (ONEAPP_FL_METRICS_ALLOW)"
        )
    return ",".join(cidrs)


def dashboard_panels(path: Path = DASHBOARD) -> list[tuple[str, list[str]]]:
    """(title, queries) of every panel of the committed dashboard JSON that has queries."""
    document = json.loads(path.read_text())
    panels: list[tuple[str, list[str]]] = []
    stack = list(document.get("panels") or [])
    while stack:
        panel = stack.pop(0)
        stack[0:0] = panel.get("panels") or []  # panels of a collapsed row
        queries = [str(t["expr"]) for t in panel.get("targets") or [] if t.get("expr")]
        if queries:
            panels.append((str(panel.get("title", "")), queries))
    return panels


def as_sent(expr: str) -> str:
    """A panel query as Grafana sends it to Prometheus with every run selected (``$run_id`` = All)."""
    return expr.replace("$__rate_interval", RATE_INTERVAL).replace('"$run_id"', '".*"')


@dataclass(frozen=True)
class Window:
    """The range the panels are asked for: the pair's federations, as Grafana's time picker would."""

    start: float
    end: float

    @property
    def step(self) -> int:
        return max(15, math.ceil((self.end - self.start) / 1000))

    def params(self, expr: str) -> dict[str, str]:
        return {"query": expr, "start": f"{self.start:.3f}", "end": f"{self.end:.3f}", "step": str(self.step)}


def pair_window(federations: list[dict[str, Any]], now: float) -> Window:
    """From 2 minutes before the first federation to ``now``, a whole number of steps long: the last
    point Prometheus evaluates is ``now`` itself, so the newest scrape (the last round) is in it."""
    started = [float(f["submitted_at"]) for f in federations if f.get("submitted_at")]
    start = (min(started) if started else now - 3600) - 120
    step = Window(start, now).step
    return Window(now - math.ceil((now - start) / step) * step, now)


def check_targets(get: PrometheusGet, expected: dict[str, str], scheme: str = "http") -> list[str]:
    """Problems with the active targets: ``expected`` maps VM id -> role; each must be there, scraped
    with ``scheme`` (``https`` where the metrics have TLS) and up."""
    active = get("/api/v1/targets", {"state": "active"}).get("activeTargets") or []
    seen = {str(t.get("labels", {}).get("one_vm_id")): t for t in active}
    problems = []
    for vm_id, role in sorted(expected.items()):
        target = seen.get(vm_id)
        if target is None:
            problems.append(f"VM {vm_id} ({role}) is not a target")
        elif not str(target.get("scrapeUrl", "")).startswith(f"{scheme}://"):
            problems.append(f"VM {vm_id} ({role}) is scraped at {target.get('scrapeUrl')}, not over {scheme}")
        elif target.get("health") != "up":
            error = str(target.get("lastError") or target.get("health"))[:200]
            problems.append(f"VM {vm_id} ({role}) target {target.get('scrapeUrl')} is {error}")
    return problems


def targets_now(get: PrometheusGet) -> str:
    """The targets' health, last scrape duration and error as Prometheus has them now (for a failure)."""
    try:
        active = get("/api/v1/targets", {"state": "active"}).get("activeTargets") or []
    except FactoryError as error:
        return f"targets now: {error}"
    said = []
    for target in active:
        vm_id = target.get("labels", {}).get("one_vm_id")
        duration = float(target.get("lastScrapeDuration") or 0)
        error = str(target.get("lastError") or "")[:120]
        said.append(f"VM {vm_id} {target.get('health')} {duration:.2f} s" + (f" ({error})" if error else ""))
    return "targets now: " + (", ".join(said) or "none")


def check_panels(get: PrometheusGet, window: Window) -> tuple[list[str], list[str], dict[str, list[Any]]]:
    """(problems, empty panels, title -> result of its first query) for every dashboard panel."""
    problems, empty, results = [], [], {}
    for title, queries in dashboard_panels():
        data = []
        for expr in queries:
            try:
                answer = get("/api/v1/query_range", window.params(as_sent(expr)))
            except FactoryError as error:
                problems.append(f"panel '{title}': {as_sent(expr)}: {error}")
                continue
            data.append(answer.get("result") or [])
        results[title] = data[0] if data else []
        if not any(data):
            empty.append(title)
            if title not in MAY_BE_EMPTY:
                problems.append(f"panel '{title}' returned no data")
    return problems, empty, results


def check_losses(series: list[dict[str, Any]], federations: list[dict[str, Any]]) -> tuple[list[str], int]:
    """Problems comparing the loss-per-round panel's series with the recorded rounds, and how many
    rounds agreed. A round's value is the series' last sample (the gauge holds one value per round)."""
    shown: dict[tuple[str, int], float] = {}
    for item in series:
        labels, values = item.get("metric", {}), item.get("values") or []
        if values and str(labels.get("round", "")).isdigit():
            shown[(str(labels.get("run_id")), int(labels["round"]))] = float(values[-1][1])
    problems, agreed = [], 0
    for federation in federations:
        run_id = federation.get("run_id")
        recorded = {
            int(record["round"]): float(record["evaluate_metrics"]["eval_loss"])
            for record in federation.get("rounds") or []
            if "eval_loss" in (record.get("evaluate_metrics") or {})
        }
        if run_id is None or not recorded:
            continue
        where = f"run {run_id} ({federation.get('task')})"
        rounds = {number for (run, number) in shown if run == str(run_id)}
        if rounds != set(recorded):
            problems.append(f"{where}: the panel shows rounds {sorted(rounds)}, results {sorted(recorded)}")
            continue
        for number, loss in sorted(recorded.items()):
            value = shown[(str(run_id), number)]
            if not math.isclose(value, loss, rel_tol=1e-9, abs_tol=1e-12):
                problems.append(f"{where} round {number}: the panel shows loss {value!r}, results {loss!r}")
            else:
                agreed += 1
    if not agreed and not problems:
        problems.append("no federation of the results has a run id with evaluation losses to compare")
    return problems, agreed


def evaluate(get: PrometheusGet, expected: dict[str, str], federations: list[dict[str, Any]],
             clock: Callable[[], float] = time.time, settle: float = 90.0, poll: float = 5.0,
             scheme: str = "http") -> dict[str, Any]:  # fmt: skip
    """The check from Prometheus' answers (``get``): targets, then panels and losses, each retried for
    up to ``settle`` seconds while it finds a problem (the target list is refreshed every 15 s, and the
    last round may end after the last scrape); ``clock`` is the time the panels are asked up to;
    ``scheme``: how every target must be scraped."""
    deadline = time.monotonic() + settle
    while (target_problems := check_targets(get, expected, scheme)) and time.monotonic() < deadline:
        time.sleep(poll)
    deadline = time.monotonic() + settle
    while True:
        panel_problems, empty, results = check_panels(get, pair_window(federations, clock()))
        loss_problems, agreed = check_losses(results.get(LOSS_PANEL, []), federations)
        if not (panel_problems or loss_problems) or time.monotonic() >= deadline:
            break
        time.sleep(poll)
    problems = target_problems + panel_problems + loss_problems
    if problems and not target_problems:  # what the scrapes did meanwhile: a series that stopped early
        problems.append(targets_now(get))
    panels = len(dashboard_panels())
    if problems:
        detail = "; ".join(problems)
    else:
        detail = (
            f"Prometheus on the monitoring VM: {len(expected)} VMs of the service up as targets "
            f"over {scheme}; "
            f"{panels} dashboard panels queried, {panels - len(empty)} with data"
            + (f" (empty: {', '.join(empty)})" if empty else "")
            + f"; {agreed} round losses equal the results"
        )
    return {"task": TASK, "name": CHECK, "passed": not problems, "detail": detail[:2000]}


def curl_get(execute: Callable[[str], tuple[int, str, str]]) -> PrometheusGet:
    """A :data:`PrometheusGet` running curl with ``execute(command) -> (status, stdout, stderr)``."""

    def get(path: str, params: dict[str, str]) -> Any:
        url = f"{PROMETHEUS}{path}?{urllib.parse.urlencode(params)}" if params else f"{PROMETHEUS}{path}"
        status, out, err = execute(f"curl --silent --show-error --max-time 60 {shlex.quote(url)}")
        if status != 0:
            raise FactoryError(f"curl exit {status}: {err.strip()[:200]}")
        try:
            answer = json.loads(out)
        except json.JSONDecodeError:
            raise FactoryError(f"not JSON: {out.strip()[:200]!r}") from None
        if answer.get("status") != "success":
            raise FactoryError(f"{answer.get('errorType', 'error')}: {str(answer.get('error'))[:200]}")
        return answer.get("data") or {}

    return get


def monitoring_check(
    deployment: Any, service: Any, federations: list[dict[str, Any]], tls: bool = False
) -> dict[str, Any]:
    """The pair's ``monitoring/monitoring_role`` check against the service's monitoring VM; ``tls``: the
    metrics have TLS (:func:`metrics_context`), so every target must be scraped over https."""
    failed = {"task": TASK, "name": CHECK, "passed": False}
    vms = service.role_vms(ROLE)
    if not vms:
        return {**failed, "detail": f"the service has no VM in its '{ROLE}' role"}
    monitor = vms[0]
    if monitor.ip is None:
        return {**failed, "detail": f"monitoring VM {monitor.id} has no IP address"}
    expected = {str(vm.id): role for role in SCRAPED_ROLES for vm in service.role_vms(role)}
    session = deployment.ssh_session(monitor.ip)
    try:
        with session.connect(timeout=60) as ssh:
            result = evaluate(
                curl_get(lambda command: ssh.execute(command, timeout=90)), expected, federations,
                scheme="https" if tls else "http",
            )  # fmt: skip
    except (FactoryError, OSError) as error:
        return {**failed, "detail": f"monitoring VM {monitor.id}: {error}"[:2000]}
    result["detail"] = f"VM {monitor.id}: {result['detail']}"[:2000]
    return result
