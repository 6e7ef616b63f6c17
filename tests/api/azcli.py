"""The real `az` (azure-cli 2.91 in .tools/az-venv, made by scripts/setup) pointed at a `kiln serve`.

az keeps its configuration in a folder of the test's (AZURE_CONFIG_DIR), trusts only kiln's
certificate (REQUESTS_CA_BUNDLE), and gets its managed identity from kiln (IDENTITY_ENDPOINT +
IDENTITY_HEADER, App Service's variables, which MSAL reads). Every other proxy-able request would go
to a dead proxy on 127.0.0.1, so nothing az tries can leave the machine; kiln itself is exempt
through NO_PROXY.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from envcheck import unavailable

ROOT = Path(__file__).resolve().parents[2]
AZ = ROOT / ".tools" / "az-venv" / "bin" / "az"
AZ_VERSION = "2.91.0"


@dataclass
class Az:
    config_dir: Path
    ca_bundle: Path
    identity_endpoint: str = ""
    identity_header: str = ""

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("AZURE_", "IDENTITY_", "MSI_", "IMDS_")) and k.lower() not in
               ("http_proxy", "https_proxy", "all_proxy", "no_proxy", "requests_ca_bundle", "ssl_cert_file")}
        env.update({
            "AZURE_CONFIG_DIR": str(self.config_dir),
            "REQUESTS_CA_BUNDLE": str(self.ca_bundle),
            "AZURE_CORE_COLLECT_TELEMETRY": "false",
            "AZURE_CORE_NO_COLOR": "true",
            "AZURE_CORE_SURVEY_MESSAGE": "false",
            "HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9",
            "NO_PROXY": "127.0.0.1,localhost",
        })
        if self.identity_endpoint:
            env["IDENTITY_ENDPOINT"] = self.identity_endpoint
            env["IDENTITY_HEADER"] = self.identity_header
        return env

    def run(self, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        r = subprocess.run([str(AZ), *args], capture_output=True, text=True, env=self.env(), timeout=timeout)
        if check and r.returncode != 0:
            raise AssertionError(f"az {' '.join(args)} failed ({r.returncode}):\n{r.stderr}")
        return r

    def json(self, *args: str, timeout: float = 300) -> Any:
        out = self.run(*args, "--output", "json", timeout=timeout).stdout
        return json.loads(out) if out.strip() else None


def require_az() -> None:
    if not AZ.exists():
        unavailable(f"az is not installed in {AZ.parent.parent} (run scripts/setup)")
    version = subprocess.run([str(AZ), "version", "--output", "json"], capture_output=True, text=True, timeout=120,
                             env={**os.environ, "AZURE_CORE_COLLECT_TELEMETRY": "false"})
    if version.returncode != 0 or json.loads(version.stdout).get("azure-cli") != AZ_VERSION:
        unavailable(f"{AZ} is not azure-cli {AZ_VERSION} (run scripts/setup)")


def log_in(az: Az, server_url: str, token: str, cloud: str = "kiln") -> list[dict[str, Any]]:
    """`az cloud register` (endpoints discovered from kiln), `az cloud set`, `az login --identity`."""
    az.run("cloud", "register", "--name", cloud, "--endpoint-resource-manager", server_url)
    az.run("cloud", "set", "--name", cloud)
    az.identity_endpoint = f"{server_url}/metadata/identity/oauth2/token"
    az.identity_header = token
    accounts: list[dict[str, Any]] = az.json("login", "--identity")
    return accounts
