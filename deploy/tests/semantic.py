"""Cross-checks over one rendered overlay that no schema can do (k8s-verification.md,
"Semantic cross-checks"). `run(objs, profile)` yields (check id, subject, ok, detail);
profile is "local" or "cluster" (staging, production)."""

from __future__ import annotations

import ipaddress
import math
import re
from pathlib import Path

import yaml

from k8s_model import (NAMESPACE, containers, dig, find, key, map_selector, pods, quantity,
                       selector_matches, template_of)

ROOT = Path(__file__).resolve().parents[2]
RULES_FILE = ROOT / "deploy/prometheus/rules/careplane.rules.yml"

# Objects made outside kustomize that manifests may reference, and why.
EXTERNAL = yaml.safe_load((Path(__file__).parent / "external-objects.yaml").read_text())

WORKLOAD_KINDS = ("Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob")
DIGEST = re.compile(r"@sha256:[0-9a-f]{64}$")
# Never reachable from careplane pods through an ipBlock: private, CGNAT, link-local (cloud
# metadata) and loopback ranges. Their internet egress would otherwise be an SSRF path inward.
PRIVATE_RANGES = [ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16",
                                                    "169.254.0.0/16", "100.64.0.0/10", "127.0.0.0/8")]
QUANTITY_PARENTS = {"requests", "limits", "hard", "default", "defaultRequest", "max", "min", "minAllowed",
                    "maxAllowed", "maxLimitRequestRatio"}


def run(objs: list[dict], profile: str):
    all_pods = pods(objs)
    hpas = find(objs, "HorizontalPodAutoscaler")

    def hpa_for(obj):
        return next((h for h in hpas if h["spec"]["scaleTargetRef"]["kind"] == obj["kind"]
                     and h["spec"]["scaleTargetRef"]["name"] == obj["metadata"]["name"]), None)

    def min_replicas(obj):
        h = hpa_for(obj)
        return h["spec"].get("minReplicas", 1) if h else dig(obj, "spec", "replicas", default=1)

    def max_replicas(obj):
        h = hpa_for(obj)
        return h["spec"]["maxReplicas"] if h else dig(obj, "spec", "replicas", default=1)

    # -- workloads and their selectors
    for o in objs:
        if o["kind"] in ("Deployment", "StatefulSet", "DaemonSet"):
            labels = dig(o, "spec", "template", "metadata", "labels", default={})
            sel = dig(o, "spec", "selector")
            yield ("workload-selector", key(o), bool(sel) and selector_matches(sel, labels),
                   "spec.selector does not match the template labels")

    for svc in find(objs, "Service"):
        sel = map_selector(dig(svc, "spec", "selector"))
        matched = [p for p in all_pods if p.namespace == svc["metadata"].get("namespace") and selector_matches(sel, p.labels)]
        yield ("service-selector", key(svc), bool(matched), "selects no rendered or operator-made pod")
        for port in dig(svc, "spec", "ports", default=[]):
            tp = port.get("targetPort", port["port"])
            ok = all(str(tp) in p.ports or any(v[0] == tp for v in p.ports.values()) for p in matched)
            yield ("service-target-port", f"{key(svc)}:{port.get('name', port['port'])}", bool(matched) and ok,
                   f"targetPort {tp} is not a port of the selected pods")

    for pdb in find(objs, "PodDisruptionBudget"):
        sel = dig(pdb, "spec", "selector")
        targets = [p.owner for p in all_pods if p.template is not None and selector_matches(sel, p.labels)]
        yield ("pdb-selector", key(pdb), bool(targets), "selects no rendered workload")
        for t in targets:
            lowest = min_replicas(t)
            spec = pdb["spec"]
            if "minAvailable" in spec:
                need = _absolute(spec["minAvailable"], lowest, up=True)
                yield ("pdb-allows-drain", f"{key(pdb)} vs {key(t)}", need < lowest,
                       f"minAvailable {spec['minAvailable']} >= minimum replicas {lowest}: node drains block")
            if "maxUnavailable" in spec:
                yield ("pdb-allows-drain", f"{key(pdb)} vs {key(t)}", _absolute(spec["maxUnavailable"], lowest) > 0,
                       "maxUnavailable 0 blocks node drains")

    for np in find(objs, "NetworkPolicy"):
        sel = np["spec"].get("podSelector")
        ok = sel == {} or any(selector_matches(sel, p.labels) for p in all_pods)
        yield ("networkpolicy-selector", key(np), ok, "podSelector matches no pod")

    services = find(objs, "Service")
    for sm in find(objs, "ServiceMonitor"):
        matched = [s for s in services if selector_matches(sm["spec"].get("selector"), s["metadata"].get("labels", {}))]
        yield ("servicemonitor-selector", key(sm), bool(matched), "selects no rendered Service")
        names = {p.get("name") for s in matched for p in s["spec"].get("ports", [])}
        for ep in sm["spec"].get("endpoints", []):
            yield ("servicemonitor-port", f"{key(sm)}:{ep.get('port')}", ep.get("port") in names,
                   "endpoint port is not a named port of the selected Service")
    for pm in find(objs, "PodMonitor"):
        matched = [p for p in all_pods if selector_matches(pm["spec"].get("selector"), p.labels)]
        yield ("podmonitor-selector", key(pm), bool(matched), "selects no pod")
        for ep in pm["spec"].get("podMetricsEndpoints", []):
            yield ("podmonitor-port", f"{key(pm)}:{ep.get('port')}", all(ep.get("port") in p.ports for p in matched),
                   "port is not a named port of the selected pods")

    for ing in find(objs, "Ingress"):
        for rule in ing["spec"].get("rules", []):
            for path in dig(rule, "http", "paths", default=[]):
                svc_ref = dig(path, "backend", "service", default={})
                svc = find(objs, "Service", svc_ref.get("name"))
                port = svc_ref.get("port", {})
                ok = bool(svc) and any(port.get("name") == p.get("name") or port.get("number") == p["port"]
                                       for p in svc[0]["spec"].get("ports", []))
                yield ("ingress-backend", f"{key(ing)}{path.get('path')}", ok, f"backend {svc_ref} does not exist")

    # -- autoscaling
    vpas = find(objs, "VerticalPodAutoscaler")
    for h in hpas:
        ref = h["spec"]["scaleTargetRef"]
        target = find(objs, ref["kind"], ref["name"])
        yield ("hpa-target", key(h), bool(target), f"scaleTargetRef {ref['kind']}/{ref['name']} is not rendered")
        yield ("hpa-range", key(h), h["spec"].get("minReplicas", 1) <= h["spec"]["maxReplicas"], "minReplicas > maxReplicas")
        if target:
            yield ("hpa-owns-replicas", key(target[0]), "replicas" not in target[0]["spec"],
                   "spec.replicas is set on a workload an HPA manages (every apply resets it)")
        hpa_resources = {dig(m, "resource", "name") for m in h["spec"].get("metrics", []) if m["type"] == "Resource"}
        for v in vpas:
            vref = v["spec"]["targetRef"]
            if (vref["kind"], vref["name"]) != (ref["kind"], ref["name"]):
                continue
            mode = dig(v, "spec", "updatePolicy", "updateMode", default="Auto")
            controlled = set()
            for cp in dig(v, "spec", "resourcePolicy", "containerPolicies", default=[]) or [{}]:
                if cp.get("mode", "Auto") != "Off":
                    controlled |= set(cp.get("controlledResources", ["cpu", "memory"]))
            clash = mode != "Off" and controlled & hpa_resources
            yield ("hpa-vpa-conflict", f"{key(h)} + {key(v)}", not clash,
                   f"VPA in mode {mode} acts on {sorted(clash or [])}, which the HPA scales on")
    for v in vpas:
        ref = v["spec"]["targetRef"]
        ok = bool(find(objs, ref["kind"], ref["name"])) or f"{ref['kind']}/{ref['name']}" in EXTERNAL["operator-workloads"]
        yield ("vpa-target", key(v), ok, f"targetRef {ref['kind']}/{ref['name']} is neither rendered nor operator-made")

    yield from _adapter(objs, hpas)

    # -- quantities and images
    for o in objs:
        for path, value in _quantities(o):
            yield ("quantity", f"{key(o)} {path}", quantity(value) is not None, f"{value!r} is not a Kubernetes quantity")
    for p in all_pods:
        if p.template is None:
            continue
        for c in containers(p.template):
            image = c.get("image", "")
            if profile == "cluster":
                yield ("image-digest", f"{key(p.owner)}/{c['name']}", bool(DIGEST.search(image)),
                       f"{image} is not pinned by digest")
            else:
                tag = image.rsplit("/", 1)[-1].partition(":")[2]
                yield ("image-tag", f"{key(p.owner)}/{c['name']}", bool(tag) and tag != "latest",
                       f"{image} has no fixed tag")

    # -- references to ConfigMaps and Secrets
    rendered = {(o["kind"], o["metadata"]["name"]) for o in objs}
    known = rendered | {tuple(x.split("/", 1)) for x in EXTERNAL["secrets-and-configmaps"]}
    for p in all_pods:
        if p.template is None:
            continue
        for kind, name in _references(p.template):
            yield ("reference", f"{key(p.owner)} -> {kind}/{name}", (kind, name) in known,
                   f"{kind}/{name} is neither rendered nor a documented external object")

    # -- network isolation
    namespaces = {p.namespace for p in all_pods if p.template is not None}
    for ns in sorted(namespaces):
        deny = [np for np in find(objs, "NetworkPolicy") if np["metadata"].get("namespace") == ns
                and np["spec"].get("podSelector") == {} and set(np["spec"].get("policyTypes", [])) == {"Ingress", "Egress"}
                and not np["spec"].get("ingress") and not np["spec"].get("egress")]
        yield ("default-deny", ns, bool(deny), "no default-deny NetworkPolicy (podSelector {}, Ingress+Egress, no rules)")
    app_pods = [p for p in all_pods if p.labels.get("app.kubernetes.io/name") == "careplane"]
    for np in find(objs, "NetworkPolicy"):
        if not any(selector_matches(np["spec"].get("podSelector"), p.labels) for p in app_pods):
            continue
        for i, rule in enumerate(np["spec"].get("egress") or []):
            for peer in rule.get("to") or []:
                if "ipBlock" in peer:
                    reached = _private_reached(peer["ipBlock"])
                    yield ("egress-private-ranges", f"{key(np)} egress[{i}] {peer['ipBlock']['cidr']}", not reached,
                           f"reaches {', '.join(map(str, reached))} from careplane pods: list them in except")

    # -- pod security (restricted profile + NSA/CISA items)
    for ns in find(objs, "Namespace"):
        yield ("pss-namespace-label", key(ns),
               dig(ns, "metadata", "labels", "pod-security.kubernetes.io/enforce") == "restricted",
               "namespace lacks pod-security.kubernetes.io/enforce: restricted")
    for p in all_pods:
        if p.template is not None:
            yield from _pod_security(p)

    # -- availability of the careplane workloads
    drain = _drain_seconds(objs)
    for d in find(objs, "Deployment"):
        yield from _availability(d, profile, min_replicas(d), drain)

    yield from _quota(objs, max_replicas)

    for o in objs:
        if o.get("kind") not in ("Namespace", "ClusterRole", "ClusterRoleBinding", "ClusterIssuer"):
            ns = o["metadata"].get("namespace")
            ok = ns == NAMESPACE or f"{key(o)}@{ns}" in EXTERNAL["other-namespaces"]
            yield ("namespace", key(o), ok, f"namespace {ns!r} is not {NAMESPACE}")

    for rule in find(objs, "PrometheusRule"):
        same = rule["spec"] == yaml.safe_load(RULES_FILE.read_text())
        yield ("rules-in-sync", key(rule), same, f"spec differs from {RULES_FILE.relative_to(ROOT)} (compose loads that file)")


def _private_reached(block: dict) -> list:
    """The private ranges an ipBlock overlaps without excepting them whole."""
    net = ipaddress.ip_network(block["cidr"], strict=False)
    excepts = [ipaddress.ip_network(e, strict=False) for e in block.get("except", [])]
    return [r for r in PRIVATE_RANGES if net.overlaps(r)
            and not any(e.version == r.version and r.subnet_of(e) for e in excepts)]


def _absolute(value, replicas: int, up: bool = False) -> int:
    if isinstance(value, str) and value.endswith("%"):
        x = int(value[:-1]) * replicas / 100
        return math.ceil(x) if up else math.floor(x)
    return int(value)


def _quantities(obj, path=""):
    if isinstance(obj, dict):
        for k, v in obj.items():
            here = f"{path}.{k}"
            if k in QUANTITY_PARENTS and isinstance(v, dict):
                for rk, rv in v.items():
                    if rk in ("cpu", "memory", "storage", "ephemeral-storage") or re.match(r"(requests|limits)\.", rk) \
                            or rk.endswith("storage"):
                        yield f"{here}.{rk}", rv
            elif k in ("size", "sizeLimit") and isinstance(v, (str, int)):
                yield here, v
            yield from _quantities(v, here)
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _quantities(v, f"{path}[{i}]")


def _references(template: dict):
    spec = template.get("spec", {})
    for c in containers(template):
        for e in c.get("envFrom", []):
            if "configMapRef" in e and not e["configMapRef"].get("optional"):
                yield "ConfigMap", e["configMapRef"]["name"]
            if "secretRef" in e and not e["secretRef"].get("optional"):
                yield "Secret", e["secretRef"]["name"]
        for e in c.get("env", []):
            for src, kind in (("configMapKeyRef", "ConfigMap"), ("secretKeyRef", "Secret")):
                ref = dig(e, "valueFrom", src)
                if ref and not ref.get("optional"):
                    yield kind, ref["name"]
    for v in spec.get("volumes", []):
        if "configMap" in v:
            yield "ConfigMap", v["configMap"]["name"]
        if "secret" in v:
            yield "Secret", v["secret"]["secretName"]
        for s in dig(v, "projected", "sources", default=[]):
            if "configMap" in s:
                yield "ConfigMap", s["configMap"]["name"]
            if "secret" in s:
                yield "Secret", s["secret"]["name"]


def _pod_security(p):
    spec = p.template["spec"]
    psc = spec.get("securityContext", {})
    who = key(p.owner)
    for flag in ("hostNetwork", "hostPID", "hostIPC"):
        yield ("pss-host-namespaces", f"{who} {flag}", not spec.get(flag), f"{flag} is set")
    yield ("pss-hostpath", who, not any("hostPath" in v for v in spec.get("volumes", [])), "mounts a hostPath volume")
    yield ("pss-sa-token", who, spec.get("automountServiceAccountToken") is False,
           "automountServiceAccountToken is not false (no careplane pod calls the API)")
    for c in containers(p.template):
        csc = c.get("securityContext", {})
        cw = f"{who}/{c['name']}"

        non_root = csc.get("runAsNonRoot", psc.get("runAsNonRoot"))
        uid = csc.get("runAsUser", psc.get("runAsUser"))
        yield ("pss-non-root", cw, non_root is True and uid is not None and uid >= 10000,
               f"runAsNonRoot must be true and runAsUser >= 10000 (got {non_root}, {uid})")
        yield ("pss-privilege-escalation", cw, csc.get("allowPrivilegeEscalation") is False,
               "allowPrivilegeEscalation is not false")
        yield ("pss-privileged", cw, not csc.get("privileged"), "privileged")
        yield ("pss-capabilities", cw, "ALL" in dig(csc, "capabilities", "drop", default=[])
               and not dig(csc, "capabilities", "add"), "capabilities must drop ALL and add none")
        yield ("pss-seccomp", cw, dig(csc, "seccompProfile", "type", default=dig(psc, "seccompProfile", "type"))
               in ("RuntimeDefault", "Localhost"), "seccompProfile is not RuntimeDefault")
        yield ("pss-read-only-root", cw, csc.get("readOnlyRootFilesystem") is True, "readOnlyRootFilesystem is not true")
        res = c.get("resources", {})
        yield ("resources", cw, all(dig(res, side, r) is not None for side in ("requests", "limits") for r in ("cpu", "memory")),
               "requests and limits for cpu and memory are required")


_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}


def _seconds(value: str) -> float:
    """A humantime duration as the binary reads it, in the forms the manifests use: "5s", "1m 30s", "500ms"."""
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h)", value)
    if not parts or re.sub(r"[\d.\s]|ms|s|m|h", "", value):
        raise ValueError(f"not a duration: {value!r}")
    return sum(float(n) * _DURATION_UNITS[u] for n, u in parts)


def _shutdown_seconds(objs, name: str, default: float) -> float:
    for cm in find(objs, "ConfigMap"):
        value = dig(cm, "data", name)
        if value is not None:
            return _seconds(str(value))
    return default  # the binary's default


def _drain_seconds(objs) -> float:
    """CAREPLANE_SHUTDOWN_DELAY (still serving after SIGTERM) + CAREPLANE_DRAIN_TIMEOUT."""
    return (_shutdown_seconds(objs, "CAREPLANE_SHUTDOWN_DELAY", 0)
            + _shutdown_seconds(objs, "CAREPLANE_DRAIN_TIMEOUT", 20))


def _availability(d, profile, lowest, drain):
    who = key(d)
    component = dig(d, "metadata", "labels", "app.kubernetes.io/component")
    spec = d["spec"]["template"]["spec"]
    yield ("rolling-update", who, dig(d, "spec", "strategy", "rollingUpdate", "maxUnavailable") in (0, "0%"),
           "RollingUpdate maxUnavailable must be 0")
    spread = spec.get("topologySpreadConstraints") or dig(spec, "affinity", "podAntiAffinity")
    yield ("spread", who, bool(spread), "no topology spread constraints or pod anti-affinity")
    for c in spec["containers"]:
        probes = [c.get(p) for p in ("startupProbe", "readinessProbe", "livenessProbe")]
        yield ("probes-present", f"{who}/{c['name']}", all(probes), "startup, readiness and liveness probes are required")
        if all(probes):
            distinct = len({yaml.safe_dump(p, sort_keys=True) for p in probes}) == 3
            yield ("probes-distinct", f"{who}/{c['name']}", distinct, "two probes are identical")
            live = dig(c, "livenessProbe", "httpGet", "path")
            yield ("liveness-no-db", f"{who}/{c['name']}", live != "/readyz",
                   "liveness probes /readyz, which checks the database: an outage would restart every pod")
    if component == "api":
        if profile == "cluster":
            yield ("api-replicas", who, lowest >= 2, f"minimum replicas {lowest} < 2 outside the local overlay")
        pre = max((_prestop_seconds(c) for c in spec["containers"]), default=0)
        yield ("prestop-sleep", who, pre >= 5, f"preStop sleep {pre}s < 5s")
        grace = spec.get("terminationGracePeriodSeconds", 30)
        yield ("grace-period", who, grace >= pre + drain + 10,
               f"terminationGracePeriodSeconds {grace} < preStop {pre} + drain {drain} + 10")
    elif component == "worker":
        grace = spec.get("terminationGracePeriodSeconds", 30)
        yield ("grace-period", who, grace >= drain + 10, f"terminationGracePeriodSeconds {grace} < drain {drain} + 10")


def _prestop_seconds(c) -> int:
    pre = dig(c, "lifecycle", "preStop", default={})
    if "sleep" in pre:
        return int(pre["sleep"]["seconds"])
    cmd = dig(pre, "exec", "command", default=[])
    m = re.search(r"sleep\s+(\d+)", " ".join(map(str, cmd)))
    return int(m.group(1)) if m else 0


def _adapter(objs, hpas):
    """Every HPA Pods/Object metric needs an adapter `rules:` entry, every External one an
    `externalRules:` entry (k8s-verification.md, prometheus-adapter)."""
    wanted = [(h, m) for h in hpas for m in h["spec"].get("metrics", []) if m["type"] in ("Pods", "Object", "External")]
    if not wanted:
        return
    config = adapter_config(objs)
    yield ("adapter-config", "prometheus-adapter", config is not None,
           "HPAs use custom metrics but no adapter config is rendered")
    if config is None:
        return
    produced = {"rules": {n for r in config.get("rules", []) for n in adapter_names(r)},
                "externalRules": {n for r in config.get("externalRules", []) for n in adapter_names(r)}}
    for h, m in wanted:
        section = "externalRules" if m["type"] == "External" else "rules"
        name = dig(m, m["type"].lower(), "metric", "name")
        yield ("adapter-produces", f"{key(h)} {m['type']} {name}", name in produced[section],
               f"no prometheus-adapter {section} entry produces {name}")


def adapter_config(objs) -> dict | None:
    for cm in find(objs, "ConfigMap"):
        text = dig(cm, "data", "config.yaml")
        if text and ("rules:" in text):
            data = yaml.safe_load(text)
            if isinstance(data, dict) and ("rules" in data or "externalRules" in data):
                return data
    return None


def adapter_series(rule: dict) -> str:
    return re.match(r"\s*([a-zA-Z_:][a-zA-Z0-9_:]*)", rule["seriesQuery"]).group(1)


def adapter_names(rule: dict) -> list[str]:
    """The metric name the adapter exposes for one rule: name.matches applied to the series,
    rewritten by name.as (default "$1" with a capture group, else the whole name)."""
    series = adapter_series(rule)
    name = rule.get("name") or {}
    m = re.search(name.get("matches", "^(.*)$"), series)
    if not m:
        return []
    template = name.get("as") or ("${1}" if m.groups() else "${0}")
    return [re.sub(r"\$\{?(\d+)\}?", lambda g: m.group(int(g.group(1))) or "", template)]


def _quota(objs, max_replicas):
    """The namespace quota must admit every workload at its maximum (HPA max, plus one surge
    pod per Deployment); operator-made pods counted from their custom resources."""
    quotas = find(objs, "ResourceQuota")
    if not quotas:
        return
    need = {"requests.cpu": 0, "requests.memory": 0, "limits.cpu": 0, "limits.memory": 0, "pods": 0}

    def add(resources, count):
        for side in ("requests", "limits"):
            for r in ("cpu", "memory"):
                need[f"{side}.{r}"] += (quantity(dig(resources, side, r, default=0)) or 0) * count

    for o in objs:
        t = template_of(o)
        if t is not None:
            n = max_replicas(o) + (1 if o["kind"] == "Deployment" else 0)
            need["pods"] += n
            for c in containers(t, init=False):
                add(c.get("resources", {}), n)
        elif o["kind"] == "Cluster":
            n = o["spec"].get("instances", 1)
            need["pods"] += n
            add(o["spec"].get("resources", {}), n)
        elif o["kind"] == "Pooler":
            n = o["spec"].get("instances", 1)
            need["pods"] += n
            for c in dig(o, "spec", "template", "spec", "containers", default=[]):
                add(c.get("resources", {}), n)
        elif o["kind"] in ("RedisReplication", "RedisSentinel"):
            n = o["spec"].get("clusterSize", 1)
            need["pods"] += n
            add(dig(o, "spec", "kubernetesConfig", "resources", default={}), n)
    for q in quotas:
        hard = q["spec"]["hard"]
        for k, v in need.items():
            if k in hard:
                limit = quantity(hard[k])
                yield ("quota-admits-maximum", f"{key(q)} {k}", limit is not None and limit >= v,
                       f"quota {hard[k]} < {v} needed at the HPA maxima")
