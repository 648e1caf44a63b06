"""GPU placement on a multi-node cluster without a GPU: three raylets on this machine
(``placement_cluster.py``, in a subprocess), one of them a "GPU" node with a logical
GPU and the ``astromesh/pool: gpu`` label.

- the GPU-annotated provider (``num_gpus: 1``, ``accelerator_type: H100``) runs there;
- CPU agents (three replicas, spread by Serve), the gateway and an agent's MCP tool
  server run on the other two nodes (the head has no label at all);
- the agent that asks for ``colocate_with: model`` runs on the model's node, its MCP
  server too, and the trace of its turn shows the agent and the model on one node;
- when that node goes, the colocated agent starts again where it would have gone
  without colocation (off the GPU pool).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from astromesh_ray.testing import ScriptedOpenAIServer

pytestmark = pytest.mark.integration

HELPER = Path(__file__).with_name("placement_cluster.py")
MCP = f"""
  tools:
    - name: srv
      type: mcp
      description: "The test MCP server."
      include: [add]
      mcp:
        transport: stdio
        command: {sys.executable}
        args: ["-m", "astromesh_ray.testing.mcp_servers"]
"""


def agent(name: str, deployment: str) -> str:
    return (
        f"apiVersion: astromesh/v1\nkind: Agent\nmetadata: {{name: {name}}}\nspec:\n"
        "  model: {primary: {providerRef: gpu-model}}\n"
        "  orchestration: {pattern: react, max_iterations: 2, timeout_seconds: 60}\n"
        + MCP
        + "  deployment:\n"
        + deployment
    )


@pytest.fixture(scope="module")
def placed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("placement")
    with ScriptedOpenAIServer(["from the GPU node", "from far away"]) as llm:
        (root / "agents").mkdir()
        (root / "providers.yaml").write_text(
            "apiVersion: astromesh/v1\nkind: ProviderConfig\nmetadata: {name: pp}\nspec:\n"
            "  providers:\n    gpu-model:\n      type: openai_compat\n"
            f"      endpoint: {llm.url}\n      models: [m]\n"
            "      deployment:\n"
            "        mode: dedicated\n"  # a model server's stand-in, on the GPU node
            "        ray_actor_options: {num_gpus: 1, accelerator_type: H100}\n"
        )
        (root / "runtime.yaml").write_text(
            "apiVersion: astromesh/v1\nkind: RuntimeConfig\nmetadata: {name: rt}\nspec:\n"
            "  gateway: {num_replicas: 2}\n"
        )
        (root / "agents" / "plain.agent.yaml").write_text(agent("plain", "    num_replicas: 3\n"))
        (root / "agents" / "near.agent.yaml").write_text(
            agent("near", "    placement: {colocate_with: model}\n")
        )
        proc = subprocess.run(
            [
                *(sys.executable, str(HELPER), str(root)),
                *("--turn", "near=hi", "--turn", "plain=hi", "--lose-gpu-node", "agent-near"),
            ],
            capture_output=True,
            text=True,
            timeout=240,
        )
        assert proc.returncode == 0, proc.stderr[-4000:]
        llm.assert_consumed()
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def nodes_of(placed: dict[str, Any], app: str, deployment: str) -> list[str]:
    found: list[str] = placed["replicas"][app][deployment]
    return found


def test_gpu_deployments_run_on_the_gpu_node(placed: dict[str, Any]) -> None:
    gpu = placed["nodes"]["gpu"]
    (provider,) = [a for a in placed["apps"] if a.startswith("provider-")]
    assert nodes_of(placed, provider, "provider") == [gpu]


def test_cpu_deployments_stay_off_the_gpu_node(placed: dict[str, Any]) -> None:
    nodes = placed["nodes"]
    others = {nodes["head"], nodes["cpu"]}
    plain = nodes_of(placed, "agent-plain", "agent")
    gateway = nodes_of(placed, "gateway", "gateway")
    assert len(plain) == 3 and set(plain) <= others
    assert len(gateway) == 2 and set(gateway) <= others
    (plain_mcp,) = [node for name, node in placed["mcp"].items() if "-plain-" in name]
    assert plain_mcp in others  # the tool server runs where the agent was placed


def test_an_agent_colocated_with_its_model_runs_on_its_node(placed: dict[str, Any]) -> None:
    gpu = placed["nodes"]["gpu"]
    # The lookup colocation makes also answers inside a Ray task (a `serve deploy` build).
    assert list(placed["seen_from_a_task"].values()) == [[gpu]]
    assert nodes_of(placed, "agent-near", "agent") == [gpu]
    (near_mcp,) = [node for name, node in placed["mcp"].items() if "-near-" in name]
    assert near_mcp == gpu


def test_the_trace_shows_where_each_part_ran(placed: dict[str, Any]) -> None:
    nodes = placed["nodes"]
    for agent, answer in (("near", "from the GPU node"), ("plain", "from far away")):
        turn = placed["turns"][agent]
        assert turn["status"] == 200 and turn["answer"] == answer
        where = {span["span"]: span for span in turn["where"]}
        assert where["run"]["app"] == f"agent-{agent}"
        assert where["provider.complete"]["node_id"] == nodes["gpu"]
        # The edge span is the agent application's (it answers its own routes): it ran
        # where the run did.
        assert where["gateway"]["app"] == f"agent-{agent}"
        assert where["gateway"]["node_id"] == where["run"]["node_id"]
        # The colocated agent ran on the model's node; the other one elsewhere.
        assert (where["run"]["node_id"] == nodes["gpu"]) is (agent == "near")


def test_a_colocated_agent_starts_elsewhere_when_its_node_goes(placed: dict[str, Any]) -> None:
    nodes = placed["nodes"]
    after = placed["after_gpu_node_loss"]["agent-near"]
    assert after and set(after) <= {nodes["head"], nodes["cpu"]}
