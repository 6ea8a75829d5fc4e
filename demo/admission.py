"""What kube-apiserver does with a new Pod in the demo: call the mutating webhook, apply its patch, store the pod.

The webhook is called the way the API server calls it: an AdmissionReview v1 CREATE over HTTPS, with
TLS verified against the CA from the MutatingWebhookConfiguration's caBundle (and nothing else).
A denial is shown with its message; an allowed review's JSONPatch is applied before the pod is created
in the stand-in through the real kubernetes client.
"""

from __future__ import annotations

import base64
import json
import ssl
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubernetes import client
from kubernetes.client.rest import ApiException

from tensorai.demo.cluster import post_json
from tensorai.demo.kube_standin_patch import PatchError, PatchFormatError, json_patch
from tensorai.demo.processes import StepError


@dataclass(frozen=True)
class AdmissionResult:
    """The webhook's answer: allowed with the patch it returned (and the patched pod), or denied with why."""

    allowed: bool
    message: str
    patch: list[dict[str, Any]]
    pod: dict[str, Any] | None


def review_for(pod: dict[str, Any]) -> dict[str, Any]:
    """The AdmissionReview v1 a kube-apiserver sends for `kubectl create` of this pod."""
    namespace = pod["metadata"].get("namespace", "default")
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": str(uuid.uuid4()),
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "name": pod["metadata"].get("name", ""),
            "namespace": namespace,
            "operation": "CREATE",
            "userInfo": {"username": "demo-user", "groups": ["system:authenticated"]},
            "object": pod,
            "oldObject": None,
            "dryRun": False,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"},
        },
    }


class Admission:
    """Admit pods through the webhook and create them in the stand-in."""

    def __init__(self, webhook_port: int, ca_path: Path, api_client: Any) -> None:
        self._url = f"https://127.0.0.1:{webhook_port}"
        self._context = ssl.create_default_context(cafile=str(ca_path))  # verify: hostname and the caBundle CA
        self._core = client.CoreV1Api(api_client)

    def review(self, pod: dict[str, Any]) -> AdmissionResult:
        """Send one AdmissionReview; StepError when the webhook cannot be reached or answers nonsense."""
        step = f"admit {pod['metadata'].get('namespace', 'default')}/{pod['metadata']['name']} through the webhook"
        review = review_for(pod)
        try:
            status, answer = post_json(self._url, "/mutate", review, context=self._context)
        except (OSError, ssl.SSLError) as error:
            raise StepError(step, f"cannot reach the webhook at {self._url}/mutate: {error}") from error
        response = answer.get("response") if isinstance(answer, dict) else None
        if status != 200 or not isinstance(response, dict):
            raise StepError(step, f"HTTP {status}: {str(answer)[:300]}")
        if response.get("uid") != review["request"]["uid"]:
            raise StepError(step, "the AdmissionReview response's uid does not match the request's")
        if not response.get("allowed"):
            message = (response.get("status") or {}).get("message") or "denied without a message"
            return AdmissionResult(False, message, [], None)
        patch: list[dict[str, Any]] = []
        if response.get("patch"):
            if response.get("patchType") != "JSONPatch":
                raise StepError(step, f"patchType {response.get('patchType')!r} is not JSONPatch")
            patch = json.loads(base64.b64decode(response["patch"]))
        try:
            patched = json_patch(pod, patch)
        except (PatchError, PatchFormatError) as error:
            raise StepError(step, f"the webhook's JSONPatch does not apply: {error}") from error
        return AdmissionResult(True, "", patch, patched)

    def create(self, pod: dict[str, Any]) -> dict[str, Any]:
        """Store the admitted pod through the API (what the API server does after admission)."""
        namespace = pod["metadata"].get("namespace", "default")
        try:
            response = self._core.create_namespaced_pod(namespace, pod, _preload_content=False)
        except ApiException as error:
            raise StepError(f"create pod {namespace}/{pod['metadata']['name']}",
                            f"HTTP {error.status}: {error.body}") from error
        return json.loads(response.data)
