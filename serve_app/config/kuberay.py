"""A KubeRay ``RayService`` manifest whose ``serveConfigV2`` is the app's own Serve config file, expanded.

The Serve config is validated exactly as ``serve-app check-config`` validates it and embedded expanded into
one Serve application per component (serve_app/config/apps.py; as YAML text, which is what KubeRay expects),
so the cluster runs the same release the file describes, with the same per-component versions. KubeRay
applies ``serveConfigV2`` itself: the release controller's history starts with the first release submitted
to the admin API (the plain file: ``serve-app deploy``).
The Ray cluster around it: a CPU head that runs no replicas (``num-cpus: 0``) and one autoscaled worker
group with a GPU each for the LLM replicas; the admin key comes from a Kubernetes secret, and so does the state
store's URL (secret ``serve-app-state``, key ``url``: a PostgreSQL URL every pod reaches; without it each pod
keeps its own SQLite file, which a head restart loses: docs/operations.md, "The state store").
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from serve_app.config.apps import expand
from serve_app.config.loader import load_serve_config


def rayservice(config_path: str | Path, *, name: str = "serve-app", image: str, ray_version: str,
               workers: tuple[int, int, int] = (1, 1, 8), gpus_per_worker: int = 1,
               admin_secret: str = "serve-app-admin", state_secret: str = "serve-app-state") -> dict[str, Any]:
    """The manifest as a dict. ``workers`` is (replicas, min, max) of the GPU worker group."""
    schema, _ = load_serve_config(config_path)  # refuse an invalid config before writing anything
    serve_config = expand(schema.model_dump(mode="json", exclude_unset=True))
    env = [{"name": "SERVE_APP_ADMIN_KEY",
            "valueFrom": {"secretKeyRef": {"name": admin_secret, "key": "admin-key", "optional": True}}},
           {"name": "SERVE_APP_STATE_URL",
            "valueFrom": {"secretKeyRef": {"name": state_secret, "key": "url", "optional": True}}}]

    def container(role: str, resources: dict[str, Any], ports: list[dict[str, Any]]) -> dict[str, Any]:
        return {"name": f"ray-{role}", "image": image, "env": env, "resources": {"requests": resources, "limits": resources},
                "ports": ports}

    replicas, lo, hi = workers
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayService",
        "metadata": {"name": name},
        "spec": {
            "serveConfigV2": yaml.safe_dump(serve_config, sort_keys=False),
            "rayClusterConfig": {
                "rayVersion": ray_version,
                "enableInTreeAutoscaling": True,
                "headGroupSpec": {
                    # The head runs the controllers and the HTTP proxy, no replicas.
                    "rayStartParams": {"dashboard-host": "0.0.0.0", "num-cpus": "0"},
                    "template": {"spec": {"containers": [container(
                        "head", {"cpu": "4", "memory": "16Gi"},
                        [{"containerPort": 6379, "name": "gcs"}, {"containerPort": 8265, "name": "dashboard"},
                         {"containerPort": 10001, "name": "client"}, {"containerPort": 8000, "name": "serve"}])]}},
                },
                "workerGroupSpecs": [{
                    "groupName": "gpu-workers",
                    "replicas": replicas,
                    "minReplicas": lo,
                    "maxReplicas": hi,
                    "rayStartParams": {},
                    "template": {"spec": {"containers": [container(
                        "worker", {"cpu": "8", "memory": "64Gi", "nvidia.com/gpu": str(gpus_per_worker)}, [])]}},
                }],
            },
        },
    }


class _BlockDumper(yaml.SafeDumper):
    """Writes multi-line strings as YAML literal blocks (``serveConfigV2: |``), as KubeRay's examples do, and
    repeated parts in full (no anchors)."""

    def ignore_aliases(self, data):
        return True


def _str(dumper: yaml.SafeDumper, value: str):
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|" if "\n" in value else None)


_BlockDumper.add_representer(str, _str)


def dump(manifest: dict[str, Any]) -> str:
    return yaml.dump(manifest, Dumper=_BlockDumper, sort_keys=False)


def serve_config_of(manifest: dict[str, Any]) -> dict[str, Any]:
    """The Serve config a RayService manifest carries."""
    return yaml.safe_load(manifest["spec"]["serveConfigV2"])
