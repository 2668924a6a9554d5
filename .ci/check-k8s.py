#!/usr/bin/env python3
"""Every object in deploy/kubernetes*.yaml against its schema, offline, unknown fields refused.

Built-in kinds: kubernetes-validate --strict (it ships the Kubernetes JSON schemas; no
network). Custom resources (the Prometheus Operator's ServiceMonitor): the Operator's CRD
models from cloudcoil-models-prometheus-operator (pydantic; patterns, types and required
fields checked there), made strict here by refusing any field the model dropped.
A kind with neither fails: nothing is let through unchecked.
Usage: .ci/check-k8s.py [FILE...]   (default: deploy/kubernetes*.yaml)
"""

import glob
import os
import sys

import kubernetes_validate
import yaml
from cloudcoil.models.prometheus_operator import v1 as operator_v1

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CUSTOM = {("monitoring.coreos.com/v1", "ServiceMonitor"): operator_v1.ServiceMonitor}


def dropped(given, kept, path=""):
    """Fields in `given` that the model's dump `kept` lacks: the model did not know them."""
    if isinstance(given, dict):
        out = []
        for key, value in given.items():
            if not isinstance(kept, dict) or key not in kept:
                out.append(f"{path}{key}")
            else:
                out += dropped(value, kept[key], f"{path}{key}.")
        return out
    if isinstance(given, list) and isinstance(kept, list):
        return [f for i, (g, k) in enumerate(zip(given, kept)) for f in dropped(g, k, f"{path}{i}.")]
    return []


def check(resource):
    """None when valid, else the reason."""
    kind, api = resource.get("kind"), resource.get("apiVersion")
    model = CUSTOM.get((api, kind))
    if model is not None:
        try:
            parsed = model.model_validate(resource)
        except Exception as e:  # pydantic's ValidationError, with every failing field
            return str(e)
        unknown = dropped(resource, parsed.model_dump(by_alias=True, exclude_unset=True))
        return f"unknown fields: {', '.join(unknown)}" if unknown else None
    version = kubernetes_validate.latest_version()
    try:
        kubernetes_validate.validate(resource, version, strict=True)
    except kubernetes_validate.SchemaNotFoundError:
        return f"no schema for {api} {kind}: add its CRD model to CUSTOM in {__file__}"
    except kubernetes_validate.ValidationError as e:
        return f"{'.'.join(str(p) for p in e.path)}: {e.message}"
    return None


def main():
    files = sys.argv[1:] or sorted(glob.glob(os.path.join(REPO, "deploy", "kubernetes*.yaml")))
    failed = 0
    for path in files:
        with open(path) as f:
            resources = [r for r in yaml.safe_load_all(f) if r]
        for r in resources:
            name = f'{os.path.relpath(path, REPO)}: {r.get("kind")}/{r.get("metadata", {}).get("name")}'
            problem = check(r)
            if problem:
                failed += 1
                print(f"FAIL {name}: {problem}")
            else:
                print(f"ok   {name}")
    if failed:
        sys.exit(f"error: {failed} Kubernetes object(s) invalid")


if __name__ == "__main__":
    main()
