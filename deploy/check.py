#!/usr/bin/env python3
"""Checks the deployment files offline, as `cargo test --test deploy` runs it:

- every kustomize overlay under deploy/k8s/overlays renders (`kubectl kustomize`, or
  `kustomize build`), and each core object validates against the Kubernetes schemas of
  `kubernetes-validate` (strict: unknown fields are errors);
- KEDA's ScaledObject and TriggerAuthentication validate against KEDA's CRD schemas kept in
  deploy/schemas/ (unknown fields are errors, as `kubectl apply --validate=strict` makes them);
- what the schemas cannot see: probes on routes the API serves, the worker's grace period
  longer than its shutdown grace, the autoscaler's queue named as the worker's queue, every
  Secret/ConfigMap reference and label selector pointing at something rendered, the GPU overlay
  asking for a GPU and the CUDA plugin;
- docker-compose.yml against the Compose specification's schema;
- deploy/prometheus/alerts.yml with `promtool check rules` and its unit tests with
  `promtool test rules`, and every `scorer_*` metric the rules name is one the code exports.

Each validator is first shown a broken object and must refuse it, so a validator that accepts
everything cannot pass for a check. Needs: kubernetes-validate, jsonschema, PyYAML; kubectl or
kustomize; promtool (PROMTOOL, PATH, or extracted from Debian's `prometheus` package into
--cache with `apt-get download`; nothing is installed system-wide).
"""

import argparse
import copy
import glob
import json
import os
import re
import shutil
import subprocess
import sys

import jsonschema
import kubernetes_validate
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
K8S_VERSION = "1.33"
KEDA_KINDS = {
    ("keda.sh/v1alpha1", "ScaledObject"): "keda.sh_scaledobjects.yaml",
    ("keda.sh/v1alpha1", "TriggerAuthentication"): "keda.sh_triggerauthentications.yaml",
}

failures = []


def fail(msg):
    failures.append(msg)
    print("FAIL:", msg)


def ok(msg):
    print("ok:", msg)


def strict(schema):
    """An OpenAPI schema of a CRD, with unknown fields refused wherever fields are listed."""
    schema = copy.deepcopy(schema)

    def walk(node):
        if isinstance(node, dict):
            if (
                "properties" in node
                and "additionalProperties" not in node
                and not node.get("x-kubernetes-preserve-unknown-fields")
            ):
                node["additionalProperties"] = False
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(schema)
    return schema


def crd_validator(path, version):
    with open(path) as f:
        crd = yaml.safe_load(f)
    for v in crd["spec"]["versions"]:
        if v["name"] == version:
            return jsonschema.Draft7Validator(strict(v["schema"]["openAPIV3Schema"]))
    raise SystemExit(f"{path} has no version {version}")


def kustomize(overlay):
    if shutil.which("kubectl"):
        cmd = ["kubectl", "kustomize", overlay]
    elif shutil.which("kustomize"):
        cmd = ["kustomize", "build", overlay]
    else:
        raise SystemExit(
            "neither kubectl nor kustomize is on PATH: install one to render the overlays"
        )
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def validate_objects(name, docs, keda):
    for d in docs:
        what = f"{name}: {d['kind']}/{d['metadata']['name']}"
        key = (d["apiVersion"], d["kind"])
        if key in keda:
            errors = sorted(keda[key].iter_errors(d), key=str)
            for e in errors:
                fail(f"{what}: {e.message} at {list(e.absolute_path)}")
            if not errors:
                ok(f"{what} (KEDA CRD schema)")
            continue
        try:
            kubernetes_validate.validate(d, K8S_VERSION, strict=True)
            ok(f"{what} (Kubernetes {K8S_VERSION}, strict)")
        except kubernetes_validate.ValidationError as e:
            fail(f"{what}: {e.message} at {list(e.path)}")


def by_kind(docs, kind):
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def pod_specs(docs):
    for d in docs:
        spec = d.get("spec", {})
        if d["kind"] in ("Deployment", "Job"):
            yield d, spec["template"]["spec"]
        elif d["kind"] == "CronJob":
            yield d, spec["jobTemplate"]["spec"]["template"]["spec"]


def api_routes():
    routes = set()
    for path in glob.glob(os.path.join(ROOT, "api/src/**/*.rs"), recursive=True):
        with open(path) as f:
            routes.update(re.findall(r'\.route\(\s*"([^"]+)"', f.read()))
    return routes


def duration_secs(value):
    m = re.fullmatch(r"(\d+)\s*(s|m|h)?", str(value).strip())
    if not m:
        return None
    return int(m.group(1)) * {"s": 1, "m": 60, "h": 3600, None: 1}[m.group(2)]


def check_semantics(name, docs, gpu):
    configs, secrets = by_kind(docs, "ConfigMap"), by_kind(docs, "Secret")
    deployments = by_kind(docs, "Deployment")
    routes = api_routes()
    for d, pod in pod_specs(docs):
        for c in pod["containers"]:
            where = f"{name}: {d['kind']}/{d['metadata']['name']}/{c['name']}"
            for src in c.get("envFrom", []):
                for kind, known in (("configMapRef", configs), ("secretRef", secrets)):
                    if kind in src and src[kind]["name"] not in known:
                        fail(f"{where}: {kind} {src[kind]['name']} is not rendered")
            for env in c.get("env", []):
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    secret = secrets.get(ref["name"])
                    if not secret or ref["key"] not in secret.get("stringData", {}):
                        fail(f"{where}: secret key {ref['name']}/{ref['key']} is not rendered")
            for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
                path = c.get(probe, {}).get("httpGet", {}).get("path")
                if path and path not in routes:
                    fail(f"{where}: {probe} {path} is not a route of the API")
    api = deployments["scorer-api"]["spec"]["template"]["spec"]["containers"][0]
    if (api["readinessProbe"]["httpGet"]["path"], api["livenessProbe"]["httpGet"]["path"]) != (
        "/ready",
        "/health",
    ):
        fail(f"{name}: the API's readiness is /ready and its liveness /health")
    config = configs["scorer-config"]["data"]
    worker = deployments["scorer-worker"]["spec"]["template"]["spec"]
    grace = duration_secs(config.get("SCORER_SHUTDOWN_GRACE", ""))
    if grace is None or worker["terminationGracePeriodSeconds"] <= grace:
        fail(f"{name}: the worker's terminationGracePeriodSeconds must exceed its shutdown grace")
    for so in by_kind(docs, "ScaledObject").values():
        target = so["spec"]["scaleTargetRef"]["name"]
        if target not in deployments:
            fail(f"{name}: ScaledObject targets {target}, which is not rendered")
        if so["spec"]["minReplicaCount"] < 1:
            fail(f"{name}: minReplicaCount 0 leaves the API unready (no live worker)")
        queue = f"{config['SCORER_NAMESPACE']}.jobs.{config['SCORER_MODEL']}"
        for t in so["spec"]["triggers"]:
            if t["type"] == "rabbitmq" and t["metadata"]["queueName"] != queue:
                fail(f"{name}: the autoscaler watches {t['metadata']['queueName']}, not {queue}")
            if "activationValue" not in t["metadata"]:
                fail(f"{name}: the rabbitmq trigger has no activationValue")
            auth = t.get("authenticationRef", {}).get("name")
            if auth and auth not in by_kind(docs, "TriggerAuthentication"):
                fail(f"{name}: authenticationRef {auth} is not rendered")
    labels = {
        n: d["spec"]["template"]["metadata"]["labels"] for n, d in deployments.items()
    }
    for pdb in by_kind(docs, "PodDisruptionBudget").values():
        want = pdb["spec"]["selector"]["matchLabels"]
        if not any(want.items() <= l.items() for l in labels.values()):
            fail(f"{name}: PodDisruptionBudget {pdb['metadata']['name']} selects no pods")
    wc = worker["containers"][0]
    env = {e["name"]: e.get("value") for e in wc.get("env", [])}
    gpus = wc["resources"].get("limits", {}).get("nvidia.com/gpu")
    if gpu and (gpus != 1 or env.get("SCORER_PJRT_PLUGIN") != "cuda13"):
        fail(f"{name}: a GPU worker wants nvidia.com/gpu: 1 and SCORER_PJRT_PLUGIN=cuda13")
    if not gpu and gpus:
        fail(f"{name}: the CPU overlay asks for a GPU")
    ok(f"{name}: references, probes, grace period, autoscaler queue")


def refuses(what, check):
    """The validator refuses a broken object (else it would pass anything)."""
    try:
        check()
    except (kubernetes_validate.ValidationError, jsonschema.ValidationError):
        ok(f"{what} refused")
        return
    fail(f"the validator accepted {what}")


def check_k8s():
    schemas = os.path.join(ROOT, "deploy/schemas")
    keda = {k: crd_validator(os.path.join(schemas, f), "v1alpha1") for k, f in KEDA_KINDS.items()}
    overlays = sorted(glob.glob(os.path.join(ROOT, "deploy/k8s/overlays/*/")))
    if not overlays:
        fail("no overlay under deploy/k8s/overlays")
    rendered = {}
    for overlay in overlays:
        name = os.path.basename(os.path.normpath(overlay))
        docs = kustomize(overlay)
        rendered[name] = docs
        validate_objects(name, docs, keda)
        check_semantics(name, docs, gpu=name == "gpu")
    docs = rendered[os.path.basename(os.path.normpath(overlays[0]))]
    deployment = copy.deepcopy(by_kind(docs, "Deployment")["scorer-api"])
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProb"] = {}
    refuses(
        "a Deployment with an unknown field",
        lambda: kubernetes_validate.validate(deployment, K8S_VERSION, strict=True),
    )
    so = copy.deepcopy(by_kind(docs, "ScaledObject")["scorer-worker"])
    so["spec"]["minReplicaCont"] = 1
    refuses(
        "a ScaledObject with an unknown field",
        lambda: keda[("keda.sh/v1alpha1", "ScaledObject")].validate(so),
    )
    so = copy.deepcopy(by_kind(docs, "ScaledObject")["scorer-worker"])
    so["spec"]["triggers"][0]["metadata"]["value"] = 64
    refuses(
        "a ScaledObject whose trigger value is not a string",
        lambda: keda[("keda.sh/v1alpha1", "ScaledObject")].validate(so),
    )


def check_compose():
    with open(os.path.join(ROOT, "deploy/schemas/compose-spec.json")) as f:
        validator = jsonschema.Draft7Validator(json.load(f))
    with open(os.path.join(ROOT, "docker-compose.yml")) as f:
        compose = yaml.safe_load(f)
    errors = sorted(validator.iter_errors(compose), key=str)
    for e in errors:
        fail(f"docker-compose.yml: {e.message} at {list(e.absolute_path)}")
    for name in ("api", "worker", "fetch", "migrate"):
        if compose["services"][name].get("build", {}).get("context") != ".":
            fail(f"docker-compose.yml: {name} is not built from the repository's Dockerfile")
    if not errors:
        ok("docker-compose.yml (Compose specification)")
    broken = copy.deepcopy(compose)
    broken["services"]["api"]["stop_grace"] = "60s"
    refuses("a compose file with an unknown service key", lambda: validator.validate(broken))


def promtool(cache):
    found = os.environ.get("PROMTOOL") or shutil.which("promtool")
    if found:
        return found
    extracted = os.path.join(cache, "prometheus-deb", "usr", "bin", "promtool")
    if not os.path.exists(extracted):
        # Debian's package ships promtool; unpack it here instead of installing the server.
        os.makedirs(cache, exist_ok=True)
        subprocess.run(["apt-get", "download", "prometheus"], cwd=cache, check=True)
        deb = sorted(glob.glob(os.path.join(cache, "prometheus_*.deb")))[-1]
        subprocess.run(["dpkg-deb", "-x", deb, os.path.join(cache, "prometheus-deb")], check=True)
    return extracted


def exported_metrics():
    names = set()
    for path in glob.glob(os.path.join(ROOT, "*/src/**/*.rs"), recursive=True):
        with open(path) as f:
            text = f.read()
        # Named in the macro, or through a constant the macro is given (jobs::deadline).
        names.update(re.findall(r'(?:counter|gauge|histogram)!\(\s*"([a-z_]+)"', text))
        names.update(re.findall(r'const [A-Z_]+: &str = "(scorer_[a-z_]+)"', text))
    return names


def check_alerts(cache):
    rules = os.path.join(ROOT, "deploy/prometheus/alerts.yml")
    tool = promtool(cache)
    for args in (["check", "rules", rules], ["test", "rules", "alerts_test.yml"]):
        r = subprocess.run(
            [tool, *args], cwd=os.path.dirname(rules), capture_output=True, text=True
        )
        if r.returncode != 0:
            fail(f"promtool {' '.join(args[:2])}: {r.stdout}{r.stderr}")
        else:
            ok(f"promtool {' '.join(args[:2])}")
    with open(rules) as f:
        doc = yaml.safe_load(f)
    exported = exported_metrics()
    # Summaries and histograms are scraped with these suffixes.
    suffix = re.compile(r"_(count|sum|bucket)$")
    for group in doc["groups"]:
        for rule in group["rules"]:
            for metric in set(re.findall(r"\b(scorer_[a-z_]+)", rule["expr"])):
                if metric not in exported and suffix.sub("", metric) not in exported:
                    fail(f"alert {rule['alert']} uses {metric}, which the code does not export")
    ok(f"alerts.yml names only exported scorer_* metrics ({len(exported)} exported)")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", default=os.path.join(ROOT, "target", "deploy-check"))
    args = parser.parse_args()
    check_k8s()
    check_compose()
    check_alerts(args.cache)
    if failures:
        print(f"{len(failures)} check(s) failed", file=sys.stderr)
        sys.exit(1)
    print("all deployment checks passed")


if __name__ == "__main__":
    main()
