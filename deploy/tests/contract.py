"""Contract between the deploy surface and the code: probe paths and ports, env var names
and metric names, read from the repository and, where it exists, the built binary.

Sources of truth: crates/careplane-api/src/admin.rs (admin route table), docs/configuration.md
(every CAREPLANE_* variable), `careplane --help` and a running binary's /metrics. A missing
source file is a failure; metrics the binary does not export yet are reported as pending.
Secrets reach the binary as files (CAREPLANE_*_FILE): each such path must be a file that a
read-only Secret volume provides, from a key the Secret (or deploy/k8s/secrets.yaml.template)
has, readable by the pod's user and nobody else."""

from __future__ import annotations

import ipaddress
import os
import re
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import yaml

from k8s_model import containers, dig, find, pods
from semantic import adapter_config, adapter_series

ADMIN_RS = "crates/careplane-api/src/admin.rs"
CONFIG_MD = "docs/configuration.md"
SECRETS_TEMPLATE = "deploy/k8s/secrets.yaml.template"
SECRET_FILE_MODE = 0o644  # Kubernetes' default for Secret volume files
BINARIES = ("target/release/careplane", "target/debug/careplane")
# Series from other exporters (CloudNativePG, kube-state-metrics, cAdvisor, Prometheus itself).
FOREIGN = re.compile(r"^(cnpg_|kube_|container_|node_|up$|ALERTS)")
PENDING_METRICS = "PENDING (metrics arrive with issue 6)"

_PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool",
                 "offset", "inf", "nan", "le", "time"}


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression: identifiers that are not functions, keywords,
    label names or durations. Histogram suffixes are kept (checked against the family)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    expr = re.sub(r"\{[^}]*\}", "", expr)
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    expr = re.sub(r"\[[^\]]*\]", "", expr)
    names = set()
    for m in re.finditer(r"(?<![\w.])([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(\()?", expr):
        word, call = m.group(1), m.group(2)
        if call or word.lower() in _PROMQL_WORDS or re.fullmatch(r"\d+[smhdwy]", word):
            continue
        names.add(word)
    return names


def used_metrics(objs_by_overlay: dict[str, list[dict]], rules_file: Path, dashboard: Path) -> dict[str, set[str]]:
    """metric name -> where it is used, across HPAs (through the adapter), adapter rules,
    alert rules (compose file and PrometheusRules) and the dashboard."""
    used: dict[str, set[str]] = {}

    def add(names, where):
        for n in names:
            if not FOREIGN.match(n):
                used.setdefault(n, set()).add(where)

    for overlay, objs in objs_by_overlay.items():
        config = adapter_config(objs) or {}
        for section in ("rules", "externalRules"):
            for r in config.get(section, []):
                add({adapter_series(r)}, f"{overlay}: adapter {section}")
                add(metric_names(r["metricsQuery"].replace("<<.Series>>", adapter_series(r))), f"{overlay}: adapter")
        for pr in find(objs, "PrometheusRule"):
            for g in pr["spec"]["groups"]:
                for r in g["rules"]:
                    add(metric_names(r["expr"]), f"{overlay}: PrometheusRule {r.get('alert') or r.get('record')}")
    for g in yaml.safe_load(rules_file.read_text())["groups"]:
        for r in g["rules"]:
            add(metric_names(r["expr"]), f"rules file: {r.get('alert') or r.get('record')}")
    for expr in dashboard_exprs(dashboard):
        add(metric_names(expr), "dashboard")
    return used


def dashboard_exprs(path: Path) -> list[str]:
    import json
    out = []

    def walk(panels):
        for p in panels:
            out.extend(t["expr"] for t in p.get("targets", []) if t.get("expr"))
            walk(p.get("panels", []))
    walk(json.loads(path.read_text()).get("panels", []))
    return out


def careplane_containers(objs):
    for p in pods(objs):
        if p.template is None:
            continue
        for c in containers(p.template):
            if re.search(r"(^|/)careplane([:@]|$)", c.get("image", "")):
                yield p, c


def env_names(objs) -> dict[str, set[str]]:
    """CAREPLANE_* names set on careplane containers, directly or through envFrom ConfigMaps."""
    found: dict[str, set[str]] = {}
    for p, c in careplane_containers(objs):
        for e in c.get("env", []):
            found.setdefault(e["name"], set()).add(p.name)
        for ef in c.get("envFrom", []):
            name = dig(ef, "configMapRef", "name")
            for cm in find(objs, "ConfigMap", name):
                for k in cm.get("data", {}):
                    found.setdefault(k, set()).add(f"{p.name} via ConfigMap {name}")
    return found


def container_env(objs, c) -> dict[str, str | None]:
    """CAREPLANE_* values one container gets: envFrom ConfigMaps, then env (which wins).
    None for values that come from elsewhere (valueFrom)."""
    env: dict[str, str | None] = {}
    for ef in c.get("envFrom", []):
        for cm in find(objs, "ConfigMap", dig(ef, "configMapRef", "name")):
            env.update(cm.get("data", {}))
    for e in c.get("env", []):
        env[e["name"]] = e.get("value")
    return {k: v for k, v in env.items() if k.startswith("CAREPLANE_")}


def secret_file_source(template: dict, c: dict, path: str) -> tuple[dict, dict, str, int] | str:
    """(volume mount, Secret reference, key, file mode) of the file at `path` in container
    `c`, or why there is none."""
    volumes = {v["name"]: v for v in template["spec"].get("volumes", [])}
    for m in c.get("volumeMounts", []):
        mount = m["mountPath"].rstrip("/")
        if m.get("subPath"):
            rel = m["subPath"] if path == mount else None
        else:
            rel = path[len(mount) + 1:] if path.startswith(mount + "/") else None
        if not rel:
            continue
        v = volumes.get(m["name"], {})
        if "secret" in v:
            sources, default = [{"secret": {**v["secret"], "name": v["secret"].get("secretName")}}], v["secret"]
        elif "projected" in v:
            sources, default = v["projected"].get("sources", []), v["projected"]
        else:
            return f"{path} is on volume {m['name']!r}, which is not a Secret volume"
        for s in sources:
            ref = s.get("secret")
            if ref is None:
                continue
            items = ref.get("items")
            for item in items if items is not None else [{"key": rel, "path": rel}]:
                if item["path"] == rel:
                    mode = item.get("mode", default.get("defaultMode", SECRET_FILE_MODE))
                    return m, ref, item["key"], mode
        return f"no item of volume {m['name']!r} is mounted at {path}"
    return f"no volumeMount provides {path}"


def _secret_keys(objs, external: dict[str, set[str]], name: str) -> set[str] | None:
    for s in find(objs, "Secret", name):
        return set(s.get("data") or {}) | set(s.get("stringData") or {})
    return external.get(name)


def _is_network(text: str) -> bool:
    try:
        ipaddress.ip_network(text.strip(), strict=False)
        return True
    except ValueError:
        return False


def run(root: Path, objs_by_overlay: dict[str, list[dict]], compose: dict | None, dockerfile: str,
        deploy_root: Path | None = None):
    """Yields (check, subject, status, detail) with status "pass", "fail" or "pending".
    `root` holds the code (route table, docs, binary); `deploy_root` the deploy files."""
    deploy_root = deploy_root or root
    announced = yaml.safe_load((Path(__file__).parent / "announced.yaml").read_text())
    admin = root / ADMIN_RS
    routes = admin.read_text() if admin.exists() else None
    yield ("route-table", ADMIN_RS, "pass" if routes is not None else "fail", "file is missing")
    config_md = root / CONFIG_MD
    documented = set(re.findall(r"CAREPLANE_[A-Z0-9_]+", config_md.read_text())) if config_md.exists() else None
    yield ("env-docs", CONFIG_MD, "pass" if documented is not None else "fail", "file is missing")

    # Probe paths and ports
    for overlay, objs in objs_by_overlay.items():
        cfg = {}
        for cm in find(objs, "ConfigMap"):
            cfg.update(cm.get("data", {}))
        admin_port = _port_of(cfg.get("CAREPLANE_ADMIN_ADDR", "127.0.0.1:9090"))
        listen_port = _port_of(cfg.get("CAREPLANE_LISTEN_ADDR", "127.0.0.1:8080"))
        for p, c in careplane_containers(objs):
            ports = {x.get("name"): x["containerPort"] for x in c.get("ports", [])}
            if "http" in ports:
                yield ("api-port", f"{overlay}: {p.name}", "pass" if ports["http"] == listen_port else "fail",
                       f"containerPort http {ports['http']} != CAREPLANE_LISTEN_ADDR port {listen_port}")
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                get = dig(c, probe, "httpGet")
                if not get:
                    continue
                subject = f"{overlay}: {p.name} {probe} {get['path']}"
                if routes is not None:
                    yield ("probe-path", subject, "pass" if f'"{get["path"]}"' in routes else "fail",
                           f"{get['path']} is not a route in {ADMIN_RS}")
                port = ports.get(get["port"], get["port"])
                yield ("probe-port", subject, "pass" if port == admin_port else "fail",
                       f"probe port {port} != CAREPLANE_ADMIN_ADDR port {admin_port}")
        for sm in find(objs, "ServiceMonitor"):
            for ep in sm["spec"].get("endpoints", []):
                path = ep.get("path", "/metrics")
                if routes is not None:
                    present = f'"{path}"' in routes
                    yield ("scrape-path", f"{overlay}: {sm['metadata']['name']} {path}",
                           "pass" if present else "pending",
                           f"{PENDING_METRICS}: {path} is not in {ADMIN_RS} yet")

    # Env vars: documented, and read by the binary when its --help says so
    names: dict[str, set[str]] = {}
    for overlay, objs in objs_by_overlay.items():
        for n, where in env_names(objs).items():
            names.setdefault(n, set()).update(f"{overlay}: {w}" for w in where)
    for svc, s in (compose or {}).get("services", {}).items():
        if "careplane" in str(s.get("image", "")) or "build" in s:
            for n in (s.get("environment") or {}):
                names.setdefault(n, set()).add(f"compose: {svc}")
    for n in re.findall(r"\b(CAREPLANE_[A-Z0-9_]+)=", dockerfile):
        names.setdefault(n, set()).add("Dockerfile")
    binary = next((root / b for b in BINARIES if (root / b).exists()), None)
    help_text = _help(binary) if binary else ""
    # Variables clap binds (`[env: NAME=…]`, `[env: NAME]` when the value is hidden), not names a
    # description merely mentions ("excludes CAREPLANE_DATABASE_URL"); any name for other formats.
    help_vars = set(re.findall(r"\[env: (CAREPLANE_[A-Z0-9_]+)[=\]]", help_text)) \
        or set(re.findall(r"CAREPLANE_[A-Z0-9_]+", help_text))
    for n in sorted(names):
        where = sorted(names[n])[0]
        if n in announced["env"]:
            done = n in help_vars
            yield ("env-announced", n, "fail" if done else "pending",
                   "the binary reads it now: remove it from deploy/tests/announced.yaml" if done
                   else f"PENDING (not implemented yet: {announced['env'][n]}): set in {where}")
            continue
        if documented is not None:
            yield ("env-documented", n, "pass" if n in documented else "fail", f"set in {where} but not in {CONFIG_MD}")
        if help_vars:
            yield ("env-read-by-binary", n, "pass" if n in help_vars else "fail",
                   f"set in {where} but `careplane --help` does not list it")
    if not help_vars:
        yield ("env-read-by-binary", "careplane --help", "pending",
               f"PENDING: no binary at {' or '.join(BINARIES)}, or its --help lists no CAREPLANE_ variables")

    # Secrets as files, and values the binary parses at start
    template = deploy_root / SECRETS_TEMPLATE
    external = {d["metadata"]["name"]: set(d.get("stringData") or {}) | set(d.get("data") or {})
                for d in (yaml.safe_load_all(template.read_text()) if template.exists() else [])
                if d and d.get("kind") == "Secret"}
    for overlay, objs in objs_by_overlay.items():
        for p, c in careplane_containers(objs):
            env = container_env(objs, c)
            psc = p.template["spec"].get("securityContext", {})
            uid = c.get("securityContext", {}).get("runAsUser", psc.get("runAsUser"))
            for n, value in sorted(env.items()):
                if not n.endswith("_FILE"):
                    continue
                subject = f"{overlay}: {p.name}/{c['name']} {n}"
                plain = n[:-len("_FILE")]
                yield ("secret-file-exclusive", subject, "fail" if plain in env else "pass",
                       f"{plain} is set too: the binary refuses both")
                found = secret_file_source(p.template, c, value or "")
                if isinstance(found, str):
                    yield ("secret-file", subject, "fail", found)
                    continue
                mount, ref, key_, mode = found
                yield ("secret-file", subject, "pass" if mount.get("readOnly") else "fail",
                       f"volumeMount {mount['name']!r} is not readOnly")
                keys = _secret_keys(objs, external, ref.get("name"))
                yield ("secret-file-key", f"{subject} <- Secret/{ref.get('name')}[{key_}]",
                       "pass" if keys is not None and key_ in keys else "fail",
                       f"Secret {ref.get('name')} is neither rendered nor in {SECRETS_TEMPLATE}" if keys is None
                       else f"Secret {ref.get('name')} has no key {key_!r}")
                # Secret files belong to root, group fsGroup: a non-root user reads them through
                # the group bits, and nobody else should read them at all.
                readable = bool(mode & 0o004) or (psc.get("fsGroup") is not None and bool(mode & 0o040)) or uid == 0
                yield ("secret-file-mode", subject, "pass" if readable and not mode & 0o007 else "fail",
                       f"mode {mode:04o}, fsGroup {psc.get('fsGroup')}: "
                       + (f"UID {uid} cannot read it" if not readable else "any UID can read it"))
            if env.get("CAREPLANE_TRUSTED_PROXIES") is not None:
                bad = [x for x in env["CAREPLANE_TRUSTED_PROXIES"].split(",") if not _is_network(x)]
                yield ("trusted-proxies", f"{overlay}: {p.name}/{c['name']}", "fail" if bad else "pass",
                       f"{', '.join(map(repr, bad))}: neither an IP nor a CIDR range (the binary refuses to start)")

    # The API checks a Subscription's endpoint when it is written and the worker before every
    # delivery: with different lists, accepted Subscriptions would never be delivered (or the
    # worker would call endpoints the API refuses).
    for overlay, objs in objs_by_overlay.items():
        values = {f"{p.name}/{c['name']}": container_env(objs, c).get("CAREPLANE_SUBSCRIPTION_ALLOWED_ENDPOINTS", "")
                  for p, c in careplane_containers(objs) if (c.get("args") or ["serve"])[0] in ("serve", "work")}
        yield ("subscription-endpoints", overlay, "pass" if len(set(values.values())) <= 1 else "fail",
               "CAREPLANE_SUBSCRIPTION_ALLOWED_ENDPOINTS differs: "
               + "; ".join(f"{k}={v!r}" for k, v in sorted(values.items())))

    # Subcommands the manifests, compose and the image run
    commands = set(re.findall(r"^  ([a-z][a-z0-9-]*)  ", help_text.split("Commands:", 1)[-1].split("Options:")[0], re.M))
    used_cmds: dict[str, str] = {}
    for overlay, objs in objs_by_overlay.items():
        for p, c in careplane_containers(objs):
            if c.get("args"):
                used_cmds.setdefault(c["args"][0], f"{overlay}: {p.name}")
    for svc, s in (compose or {}).get("services", {}).items():
        if "build" in s and s.get("command"):
            used_cmds.setdefault(s["command"][0], f"compose: {svc}")
    for sub in re.findall(r'careplane", "([a-z-]+)"|^CMD \["([a-z-]+)"\]', dockerfile, re.M):
        used_cmds.setdefault(sub[0] or sub[1], "Dockerfile")
    for sub, where in sorted(used_cmds.items()):
        if sub in announced["subcommands"]:
            done = sub in commands
            yield ("subcommand-announced", sub, "fail" if done else "pending",
                   "the binary has it now: remove it from deploy/tests/announced.yaml" if done
                   else f"PENDING (not implemented yet: {announced['subcommands'][sub]}): used by {where}")
        elif commands:
            yield ("subcommand", sub, "pass" if sub in commands else "fail", f"used by {where}, not in `careplane --help`")
        else:
            yield ("subcommand", sub, "pending", "PENDING: no binary to ask for its subcommands")

    # Metric names
    used = used_metrics(objs_by_overlay, deploy_root / "deploy/prometheus/rules/careplane.rules.yml",
                        deploy_root / "deploy/k8s/components/monitoring/dashboards/careplane.json")
    exported = _exported_metrics(binary) if binary else None
    for n in sorted(used):
        if exported is None:
            yield ("metric-exported", n, "pending", f"{PENDING_METRICS}: used by {sorted(used[n])[0]}")
        else:
            ok = n in exported or re.sub(r"_(bucket|count|sum)$", "", n) in exported
            yield ("metric-exported", n, "pass" if ok else "fail",
                   f"used by {sorted(used[n])[0]} but not exported on /metrics")


def _port_of(addr: str) -> int:
    return int(addr.rsplit(":", 1)[1])


def _help(binary: Path) -> str:
    out = []
    for args in (["--help"], ["serve", "--help"], ["work", "--help"], ["migrate", "--help"]):
        try:
            r = subprocess.run([str(binary), *args], capture_output=True, text=True, timeout=10)
            out.append(r.stdout + r.stderr if r.returncode == 0 else "")
        except (OSError, subprocess.TimeoutExpired):
            pass
    return "\n".join(out)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _exported_metrics(binary: Path) -> set[str] | None:
    """Start `careplane serve` (and `work`, if it exists) on free loopback ports with a
    throwaway SQLite database and read the metric families from /metrics. None when the
    binary does not serve /metrics (yet)."""
    names: set[str] = set()
    for sub in ("serve", "work"):
        with tempfile.TemporaryDirectory() as tmp:
            admin, api = _free_port(), _free_port()
            env = dict(os.environ, CAREPLANE_LISTEN_ADDR=f"127.0.0.1:{api}",
                       CAREPLANE_ADMIN_ADDR=f"127.0.0.1:{admin}", CAREPLANE_LOG_FORMAT="text",
                       CAREPLANE_DATABASE_URL=f"sqlite://{tmp}/careplane.db", CAREPLANE_MIGRATE="true")
            proc = subprocess.Popen([str(binary), sub], cwd=tmp, env=env,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                if _wait_http(f"http://127.0.0.1:{admin}/livez", proc):
                    try:
                        if sub == "serve":
                            # Labelled series exist once something was recorded: one request first.
                            with urllib.request.urlopen(f"http://127.0.0.1:{api}/fhir/metadata", timeout=5):
                                pass
                        with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=5) as r:
                            text = r.read().decode()
                        names |= set(re.findall(r"^# TYPE (\S+)", text, re.M))
                        names |= set(re.findall(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{| )", text, re.M))
                    except OSError:
                        pass
            finally:
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
    return names or None


def _wait_http(url: str, proc: subprocess.Popen, seconds: float = 15) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return True
        except OSError:
            time.sleep(0.1)
    return False
