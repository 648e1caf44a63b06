"""How an agent replica reaches a model (``replica_provider``): a remote API through a
client in the replica, its answers located and traced as a provider deployment's."""

from __future__ import annotations

import asyncio

from astromesh_ray.core.messages import CompletionRequest, Message
from astromesh_ray.core.trace import TraceContext
from astromesh_ray.serve.providers import LocatedProvider, ServeProvider, replica_provider
from astromesh_ray.spec import DeploymentSpec, ModelEndpoint
from astromesh_ray.spec.deployment import ProviderDeploymentSpec
from astromesh_ray.testing import ScriptedProvider

WHERE = {"app": "agent-a", "replica": "r1"}


def test_remote_apis_run_in_the_replica_hosted_models_in_their_deployment() -> None:
    remote = ModelEndpoint(provider="openai_compat", model="m", endpoint="http://127.0.0.1:9/v1")
    assert isinstance(replica_provider(remote), LocatedProvider)
    dedicated = ProviderDeploymentSpec(mode="dedicated")
    for endpoint in (
        ModelEndpoint(provider="onnx", model="m"),
        ModelEndpoint(provider="vllm", model="m", options={"mode": "in_cluster"}),
        ModelEndpoint(provider="openai", model="m", deployment=dedicated),
    ):
        assert isinstance(replica_provider(endpoint), ServeProvider), endpoint
    # A plain deployment block (an embedder's, say) says nothing about the mode.
    assert not ModelEndpoint(provider="ollama", model="m", deployment=DeploymentSpec()).dedicated


def test_answers_carry_the_replica_and_a_provider_span() -> None:
    root = TraceContext.new()
    request = CompletionRequest(
        messages=[Message(role="user", content="hi")], trace_parent=root.traceparent
    )

    async def main() -> None:
        located = LocatedProvider(ScriptedProvider(["one", "two"]), WHERE, mode="in_replica")
        completion = await located.complete(request)
        assert completion.message.content == "one" and completion.location == WHERE
        (span,) = completion.spans
        assert span["name"] == "provider.complete" and span["where"] == WHERE
        assert span["parent_id"] == root.span_id and span["attributes"]["mode"] == "in_replica"
        chunks = [c async for c in located.stream(request)]
        assert "".join(c.text or "" for c in chunks) == "two"
        last = chunks[-1]
        assert last.is_last and last.location == WHERE
        assert [s["name"] for s in last.spans] == ["provider.stream"]
        assert all(not c.spans for c in chunks[:-1])
        await located.aclose()

    asyncio.run(main())
