"""The KubeRay manifest: `serve-app kuberay` writes valid YAML of kind RayService whose serveConfigV2 is
the Serve config file expanded into one application per component and passes the app's own config validation; an invalid config
is refused before anything is written; the manifest checked into cluster/kuberay matches the generator."""

from pathlib import Path

import pytest
import ray
import yaml
from ray.serve.schema import ServeDeploySchema

from serve_app.cli import main
from serve_app.config.apps import expand
from serve_app.config.kuberay import serve_config_of
from tests.names import APP

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


def test_manifest_round_trips_to_the_same_serve_config(tmp_path):
    for config in ("configs/gpu.yaml", "configs/dev-cpu.yaml"):
        out = tmp_path / "rs.yaml"
        assert main(["kuberay", str(ROOT / config), "--image", "example/serve-app:1", "-o", str(out)]) == 0
        manifest = yaml.safe_load(out.read_text())
        assert manifest["apiVersion"] == "ray.io/v1" and manifest["kind"] == "RayService"
        assert isinstance(manifest["spec"]["serveConfigV2"], str)
        serve_config = serve_config_of(manifest)
        # The config file expanded: one Serve application per component (serve_app/config/apps.py).
        assert serve_config == expand(yaml.safe_load((ROOT / config).read_text()))
        assert [a["name"] for a in serve_config["applications"]] == [
            "serve_app", APP, "serve_app-retrieval", "serve_app-agent"]
        ServeDeploySchema.model_validate(serve_config)
        cluster = manifest["spec"]["rayClusterConfig"]
        assert cluster["rayVersion"] == ray.__version__
        worker = cluster["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
        assert worker["image"] == "example/serve-app:1" and worker["resources"]["limits"]["nvidia.com/gpu"] == "1"


def test_invalid_config_is_refused(tmp_path):
    bad = yaml.safe_load((ROOT / "configs/gpu.yaml").read_text())
    bad["applications"][0]["args"]["engine"]["max_num_seqs"] = -1
    src = tmp_path / "bad.yaml"
    src.write_text(yaml.safe_dump(bad))
    out = tmp_path / "rs.yaml"
    assert main(["kuberay", str(src), "--image", "x", "-o", str(out)]) == 2
    assert not out.exists()


def test_checked_in_manifest_is_the_generators(tmp_path):
    out = tmp_path / "rs.yaml"
    main(["kuberay", str(ROOT / "configs/gpu.yaml"), "--image", "registry.example/serve-app:0.1", "-o", str(out)])
    new, checked_in = yaml.safe_load(out.read_text()), yaml.safe_load((ROOT / "cluster/kuberay/rayservice.yaml").read_text())
    # Only the Ray version may differ (it is the installed one); regenerate the file when the config changes.
    checked_in["spec"]["rayClusterConfig"]["rayVersion"] = new["spec"]["rayClusterConfig"]["rayVersion"]
    assert new == checked_in
