"""NetworkPolicy reachability matrix: evaluate the rendered policies into the set of
allowed flows (source pod group -> destination pod group:port/protocol) and compare it,
both ways, with the intended matrix in reachability.yaml."""

from __future__ import annotations

from pathlib import Path

import yaml

from k8s_model import NAMESPACE, Pod, find, in_cidr, pods, selector_matches

SPEC = yaml.safe_load((Path(__file__).parent / "reachability.yaml").read_text())
POD_IP = "10.244.1.10"  # any pod address: ipBlock peers are matched against it too (Calico does)


def outside_pods() -> list[Pod]:
    out = []
    for name, p in SPEC["outside"].items():
        ports = {port: (int(port.split("/")[0]), port.split("/")[1]) for port in p.get("ports", [])}
        out.append(Pod(name, p.get("namespace", ""), p.get("labels", {}), ports, ip=p.get("ip")))
    return out


def allowed_flows(objs: list[dict]) -> set[str]:
    policies = find(objs, "NetworkPolicy")
    ns_labels = {}
    for ns in find(objs, "Namespace"):
        name = ns["metadata"]["name"]
        ns_labels[name] = {**ns["metadata"].get("labels", {}), "kubernetes.io/metadata.name": name}
    group = pods(objs) + outside_pods()
    flows = set()
    for src in group:
        for dst in group:
            if src is dst and src.ip:
                continue
            if src.namespace != NAMESPACE and dst.namespace != NAMESPACE:
                continue  # neither side is governed by these policies
            for port, proto in set(dst.ports.values()):
                if _allows(policies, ns_labels, src, dst, port, proto, "Egress") and \
                        _allows(policies, ns_labels, dst, src, port, proto, "Ingress"):
                    flows.add(f"{src.name} -> {dst.name}:{port}/{proto}")
    return flows


def _types(policy) -> set[str]:
    spec = policy["spec"]
    return set(spec.get("policyTypes") or (["Ingress"] + (["Egress"] if "egress" in spec else [])))


def _allows(policies, ns_labels, subject: Pod, peer: Pod, port, proto, direction) -> bool:
    """Whether the policies selecting `subject` let traffic to (Egress) or from (Ingress) `peer`
    on `port` of the destination. A pod no policy selects for that direction is open."""
    if subject.ip or subject.namespace != NAMESPACE:
        return True
    selecting = [p for p in policies if p["metadata"].get("namespace") == subject.namespace
                 and direction in _types(p) and selector_matches(p["spec"].get("podSelector", {}), subject.labels)]
    if not selecting:
        return True
    dst = peer if direction == "Egress" else subject
    field, peers_key = ("egress", "to") if direction == "Egress" else ("ingress", "from")
    for p in selecting:
        for rule in p["spec"].get(field) or []:
            peers = rule.get(peers_key)
            if peers and not any(_peer_matches(x, p["metadata"]["namespace"], ns_labels, peer) for x in peers):
                continue
            if _port_matches(rule.get("ports"), dst, port, proto):
                return True
    return False


def _peer_matches(peer: dict, policy_ns: str, ns_labels: dict, pod: Pod) -> bool:
    if "ipBlock" in peer:
        return in_cidr(pod.ip or POD_IP, peer["ipBlock"])
    if pod.ip:
        return False  # address-only peers are reachable through ipBlock alone
    if "namespaceSelector" in peer:
        labels = ns_labels.get(pod.namespace, {"kubernetes.io/metadata.name": pod.namespace})
        if not selector_matches(peer["namespaceSelector"], labels):
            return False
    elif pod.namespace != policy_ns:
        return False
    return "podSelector" not in peer or selector_matches(peer["podSelector"], pod.labels)


def _port_matches(ports, dst: Pod, port: int, proto: str) -> bool:
    if not ports:
        return True
    for p in ports:
        if p.get("protocol", "TCP") != proto:
            continue
        want = p.get("port")
        if want is None:
            return True
        if isinstance(want, str):
            want = dst.ports.get(want, (None,))[0]
        if want is not None and want <= port <= p.get("endPort", want):
            return True
    return False


def intended(objs: list[dict], overlay: str) -> set[str]:
    in_ns = sorted(p.name for p in pods(objs) if p.namespace == NAMESPACE)
    flows = set()
    for line in SPEC["intended"]["all"] + SPEC["intended"][overlay]:
        src, _, dst = (s.strip() for s in line.partition("->"))
        for s in (in_ns if src == "*" else [src]):
            flows.add(f"{s} -> {dst}")
    return flows


def run(objs: list[dict], overlay: str):
    """Yields (flow, ok, detail): every intended flow must be allowed, every allowed one intended,
    and no flow listed under `denied` may be either."""
    got, want = allowed_flows(objs), intended(objs, overlay)
    for f in sorted(want | got):
        if f in want and f in got:
            yield f, True, ""
        elif f in want:
            yield f, False, "intended but blocked by the NetworkPolicies"
        else:
            yield f, False, "allowed by the NetworkPolicies but not intended"
    for f in SPEC.get("denied", []):
        if f in got:
            yield f"denied {f}", False, "allowed by the NetworkPolicies but listed as denied"
        elif f in want:
            yield f"denied {f}", False, "intended and listed as denied: one list is wrong"
        else:
            yield f"denied {f}", True, ""
