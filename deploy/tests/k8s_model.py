"""The rendered manifests as data: objects, pod templates, the pods operators will
create, label selectors and resource quantities. Shared by the offline checks."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

import yaml

NAMESPACE = "healthcare-backend"


def load(path: Path | str) -> list[dict]:
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def key(obj: dict) -> str:
    return f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"


def find(objs: list[dict], kind: str, name: str | None = None) -> list[dict]:
    return [o for o in objs if o.get("kind") == kind and (name is None or o["metadata"].get("name") == name)]


def dig(obj, *path, default=None):
    for p in path:
        if isinstance(obj, dict):
            obj = obj.get(p)
        elif isinstance(obj, list) and isinstance(p, int) and p < len(obj):
            obj = obj[p]
        else:
            return default
        if obj is None:
            return default
    return obj


# --- pods -----------------------------------------------------------------------------------

@dataclass
class Pod:
    """A group of identical pods: from a rendered pod template or synthesised for an operator."""

    name: str
    namespace: str
    labels: dict
    ports: dict = field(default_factory=dict)  # name -> (port, protocol); unnamed ports keyed by number
    owner: dict | None = None  # the rendered object, None for pods outside the manifests
    template: dict | None = None  # pod template (rendered workloads only)
    ip: str | None = None  # for address-only peers (internet, API server)


def template_of(obj: dict) -> dict | None:
    kind = obj.get("kind")
    if kind in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"):
        return dig(obj, "spec", "template")
    if kind == "CronJob":
        return dig(obj, "spec", "jobTemplate", "spec", "template")
    return None


def containers(template: dict, init: bool = True) -> list[dict]:
    spec = template.get("spec", {})
    out = list(spec.get("containers", []))
    if init:
        out += spec.get("initContainers", [])
    return out


def _ports_of(template: dict) -> dict:
    ports = {}
    for c in containers(template):
        for p in c.get("ports", []):
            entry = (p["containerPort"], p.get("protocol", "TCP"))
            ports[p.get("name") or str(p["containerPort"])] = entry
    return ports


def operator_pods(objs: list[dict]) -> list[Pod]:
    """Pods that operators create from the custom resources, with the labels and ports they
    document. Selectors and NetworkPolicies aim at these, so checks must know them."""
    pods = []
    for o in objs:
        kind, name = o.get("kind"), o["metadata"]["name"]
        ns = o["metadata"].get("namespace", NAMESPACE)
        if kind == "Cluster" and o["apiVersion"].startswith("postgresql.cnpg.io/"):
            pods.append(Pod(name, ns, {"cnpg.io/cluster": name, "cnpg.io/podRole": "instance"},
                            {"postgresql": (5432, "TCP"), "status": (8000, "TCP"), "metrics": (9187, "TCP")}, o))
        elif kind == "Pooler":
            labels = {"cnpg.io/poolerName": name, "cnpg.io/podRole": "pooler"}
            labels.update(dig(o, "spec", "template", "metadata", "labels", default={}))
            pods.append(Pod(name, ns, labels, {"pgbouncer": (5432, "TCP"), "metrics": (9127, "TCP")}, o))
        elif kind == "RedisReplication":
            pods.append(Pod(name, ns, {"app": name, "redis_setup_type": "replication"},
                            {"redis-client": (6379, "TCP")}, o))
        elif kind == "RedisSentinel":
            pods.append(Pod(name, ns, {"app": name, "redis_setup_type": "sentinel"},
                            {"sentinel-client": (26379, "TCP")}, o))
        elif kind in ("Issuer", "ClusterIssuer") and any("http01" in s for s in dig(o, "spec", "acme", "solvers", default=[])):
            pods.append(Pod("acme-http01-solver", NAMESPACE, {"acme.cert-manager.io/http01-solver": "true"},
                            {"http": (8089, "TCP")}, o))
    return pods


def pods(objs: list[dict]) -> list[Pod]:
    out = []
    for o in objs:
        t = template_of(o)
        if t is not None:
            out.append(Pod(o["metadata"]["name"], o["metadata"].get("namespace", NAMESPACE),
                           dig(t, "metadata", "labels", default={}), _ports_of(t), o, t))
    return out + operator_pods(objs)


# --- selectors ------------------------------------------------------------------------------

def selector_matches(selector: dict | None, labels: dict) -> bool:
    """Label selector semantics (matchLabels + matchExpressions); {} matches everything."""
    if selector is None:
        return False
    for k, v in (selector.get("matchLabels") or {}).items():
        if labels.get(k) != v:
            return False
    for e in selector.get("matchExpressions") or []:
        k, op, values = e["key"], e["operator"], e.get("values") or []
        if op == "In" and labels.get(k) not in values:
            return False
        if op == "NotIn" and k in labels and labels[k] in values:
            return False
        if op == "Exists" and k not in labels:
            return False
        if op == "DoesNotExist" and k in labels:
            return False
    return True


def map_selector(labels: dict | None) -> dict | None:
    """A Service-style plain map as a label selector; an empty map selects nothing."""
    return {"matchLabels": labels} if labels else None


# --- quantities -----------------------------------------------------------------------------

_QUANTITY = re.compile(r"^([+-]?(?:\d+(?:\.\d*)?|\.\d+))(Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E|[eE][+-]?\d+)?$")
_FACTORS = {None: 1, "n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"), "k": 10**3, "M": 10**6,
            "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30,
            "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}


def quantity(value) -> Decimal | None:
    """Kubernetes resource.Quantity as a number, or None when the string is not one."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return Decimal(str(value))
    m = _QUANTITY.match(str(value))
    if not m:
        return None
    number, suffix = Decimal(m.group(1)), m.group(2)
    if suffix and suffix[0] in "eE":
        return number * (Decimal(10) ** int(suffix[1:]))
    return number * Decimal(_FACTORS[suffix])


def in_cidr(ip: str, block: dict) -> bool:
    addr = ipaddress.ip_address(ip)
    if addr not in ipaddress.ip_network(block["cidr"]):
        return False
    return not any(addr in ipaddress.ip_network(e) for e in block.get("except", []))
