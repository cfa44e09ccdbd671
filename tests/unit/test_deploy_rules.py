"""deploy/prometheus against the code, read by promtool: the rules check
and pass their committed unit tests, those tests feed series shaped as the
daemons expose them and fire every alert, and a suite derived from the
rules (deploycheck/rules.py) holds each selector, grouping label and alert
text to what colo_plane/metrics.py exposes."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from deploycheck import PROMETHEUS, RULE_TESTS, RULES, load, rules, tools
from deploycheck.cli import flag_errors, inline_commands, parse, port
from deploycheck.promql import Selector, selectors
from deploycheck.rules import scoping_problems
from deploycheck.series import METRICS, RULE_JOBS, SYNTHETIC
from deploycheck.systemd import daemon_argv
from prometheus_client.metrics import MetricWrapperBase

from colo_plane import metrics


def test_promtool_checks_and_unit_tests_the_rules() -> None:
    for args in (["check", "rules", RULES.name], ["test", "rules", RULE_TESTS.name]):
        out = tools.run(["promtool", *args], cwd=PROMETHEUS)
        assert out.returncode == 0, out.stdout + out.stderr


def test_rules_use_only_what_the_code_exposes(tmp_path: Path) -> None:
    assert rules.promtool_problems(RULES, tmp_path) == ""


def test_rule_tests_feed_series_as_the_code_exposes_them() -> None:
    assert rules.input_problems(load(RULE_TESTS)) == []


def test_every_alert_fires_in_a_rule_test() -> None:
    """Else its $labels are checked nowhere (rules.template_checks)."""
    alerts = {r["alert"] for r in rules.rules() if "alert" in r}
    fired = {alert for case in load(RULE_TESTS)["tests"] for alert, _ in rules.firing(case)}
    assert alerts - fired == set()


def test_rules_are_complete_for_the_night_shift() -> None:
    rule_list = rules.rules()
    alerts = {r["alert"]: r for r in rule_list if "alert" in r}
    for name, rule in alerts.items():
        assert rule["labels"]["severity"] in ("critical", "warning"), name
        assert rule["annotations"]["summary"].strip(), name
        assert len(rule["annotations"]["description"].split()) >= 15, f"{name}: say what to do"
    # What the rules must watch, by the series they read.
    read = {sel.metric for rule in alerts.values() for sel in selectors(rule["expr"])[0]}
    for series in [
        "colo_pairs",
        "colo_checkpoints_failed_total",
        "colo_verify_failures_total",
        "colo_sync_reports_dropped_total",
        "colo_agents_alive",
        "up",
        "instance_role:colo_checkpoint_pause_seconds:p99_5m",
        "instance:colo_divergence_share:ratio_rate5m",
        "colo_store_errors_total",
    ]:
        assert series in read, f"no alert reads {series}"
    records = [r["record"] for r in rule_list if "record" in r]
    assert len(records) == len(set(records)) and all(r.count(":") == 2 for r in records), "level:metric:ops"


def test_alerts_name_real_commands() -> None:
    """What the descriptions tell the operator to run, runs."""
    commands = [
        argv
        for rule in rules.rules()
        for text in rule.get("annotations", {}).values()
        for argv in inline_commands(" ".join(text.split()))
    ]
    assert len(commands) >= 5
    assert [(argv, errors) for argv in commands if (errors := flag_errors(argv))] == []


def test_every_rule_names_the_job_of_the_series_it_reads() -> None:
    assert scoping_problems(rules.rules()) == []
    assert scoping_problems([{"alert": "X", "expr": "absent(colo_agents_alive)"}])
    assert scoping_problems([{"alert": "X", "expr": 'colo_pairs{job="colo-agent"} > 0'}])


def test_example_scrape_config_names_the_jobs_the_rules_use() -> None:
    config = load(PROMETHEUS / "prometheus.example.yaml")
    assert config["rule_files"] == [RULES.name]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    for daemon, job in RULE_JOBS.items():
        args = parse(daemon_argv(daemon))
        targets = [t for sc in jobs[job]["static_configs"] for t in sc["targets"]]
        assert targets and {port(t) for t in targets} == {port(args.metrics_listen)}, job
    # The Kubernetes job takes the job label from the pods' app.kubernetes.io/name.
    relabels = [r for job in jobs.values() for r in job.get("relabel_configs", [])]
    assert any(
        r.get("target_label") == "job"
        and r["source_labels"] == ["__meta_kubernetes_pod_label_app_kubernetes_io_name"]
        for r in relabels
    )


def test_promtool_checks_the_example_scrape_config(tmp_path: Path) -> None:
    """Debian's promtool lacks Kubernetes service discovery: the file less that job."""
    config = load(PROMETHEUS / "prometheus.example.yaml")
    config["scrape_configs"] = [j for j in config["scrape_configs"] if "kubernetes_sd_configs" not in j]
    (tmp_path / "prometheus.yaml").write_text(yaml.safe_dump(config))
    (tmp_path / RULES.name).write_text(RULES.read_text())
    out = tools.run(["promtool", "check", "config", "prometheus.yaml"], cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr


# -- each daemon's series -------------------------------------------------------------


def _families(collectors: tuple[Any, ...]) -> set[str]:
    return {c.describe()[0].name for c in collectors}


def test_each_daemon_exports_its_own_families_only() -> None:
    common, agent, coordinator = (_families(g) for g in (metrics.COMMON, metrics.AGENT, metrics.COORDINATOR))
    defined = {o.describe()[0].name for o in vars(metrics).values() if isinstance(o, MetricWrapperBase)}
    assert common | agent | coordinator == defined, "every metric belongs to one daemon, or both"
    assert not (common & agent or common & coordinator or agent & coordinator)
    for daemon, own, other in (("agent", agent, coordinator), ("coordinator", coordinator, agent)):
        served = {f.name for f in metrics.registry(daemon).collect()}
        assert own | common <= served, daemon
        assert not served & other, f"the {daemon} serves the other daemon's families"


# -- the checks above can fail ----------------------------------------------------------


def test_selectors_names_series_and_grouping_labels() -> None:
    found, grouping = selectors(
        'histogram_quantile(0.99, sum by (role, le) (rate(a_bucket{job="x",r=~"p|s"}[5m]))) '
        "> on(instance) group_left(role) b:c:d offset 5m and absent(up) or vector(1) > bool 2e3"
    )
    assert found == [
        Selector("a_bucket", (("job", "=", "x"), ("r", "=~", "p|s"))),
        Selector("b:c:d", ()),
        Selector("up", ()),
    ]
    assert grouping == ["role", "le", "instance", "role"]


LOST = 'colo_pairs{job="colo-coordinator",state="LOST"}'
VERIFY = "sum by (job, instance) (increase(colo_verify_failures_total"
FAILED = "sum by (trigger) (rate(colo_checkpoints_failed_total{"
PAUSE = "expr: instance_role:colo_checkpoint_pause_seconds:p99_5m > 0.1"
UNPLANNED = 'cause=~"primary_lost|secondary_lost|secondary_unhealthy"'
BY_STATE = 'sum by (state) (colo_pairs{job="colo-coordinator"})'
# (what in the rules, replaced by what, makes promtool say what)
MUTATIONS = [
    (LOST, LOST.replace("colo_pairs", "colo_pairs_total"), "colo_pairs_total"),  # a gauge has no _total
    (FAILED, FAILED.replace("_total", ""), "colo_checkpoints_failed{"),  # a counter is read by its suffix
    (LOST, LOST.replace("state", "status"), 'status="LOST"'),
    (LOST, LOST.replace("LOST", "lost"), 'state="lost"'),
    (UNPLANNED, 'cause=~"primary_lost|host_lost"', 'cause="host_lost"'),
    (BY_STATE, BY_STATE.replace("(state)", "(status)"), 'status!=""'),
    # a label a recording rule's aggregation dropped
    (PAUSE, PAUSE.replace("p99_5m", 'p99_5m{le="1"}'), 'le="1"'),
    # an alert text naming a label its expression aggregates away
    (
        VERIFY,
        VERIFY.replace("job, instance", "job"),
        'alertname="ColoVerifyFailed",alertstate="firing",instance=""',
    ),
]


@pytest.mark.parametrize(("old", "new", "said"), MUTATIONS)
def test_rule_checks_catch(tmp_path: Path, old: str, new: str, said: str) -> None:
    text = RULES.read_text()
    assert text.count(old) == 1, old
    broken = tmp_path / "broken.yaml"
    broken.write_text(text.replace(old, new))
    suite = tmp_path / "suite"
    suite.mkdir()
    problems = rules.promtool_problems(broken, suite, committed=False)
    assert said in problems, problems


def test_rule_test_input_check_catches() -> None:
    suite = {"tests": [{"input_series": [
        {"series": 'colo_no_such{job="colo-agent",instance="a"}'},
        {"series": 'colo_pairs{job="colo-coordinator",instance="a"}'},
        {"series": 'colo_pairs{job="colo-coordinator",instance="a",state="lost"}'},
    ]}]}  # fmt: skip
    problems = rules.input_problems(suite)
    assert len(problems) == 3, problems
    assert re.search("no such series", problems[0]) and "labels" in problems[1] and "'lost'" in problems[2]
    assert set(METRICS) and set(SYNTHETIC) == {"up"}
