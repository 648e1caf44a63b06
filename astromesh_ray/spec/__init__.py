"""The YAML contract: pydantic models of every kind, and the loader.

YAML → frozen, validated objects.  Every error names file, line, column and field
path, with a did-you-mean; features the runtime does not run yet are refused at
load time (``astromesh_ray.spec.support``).  This package never imports
``astromesh_ray.core`` or ``ray``.
"""

from astromesh_ray.spec.agent import (
    AgentBodySpec,
    AgentSpec,
    IdentitySpec,
    PermissionsSpec,
    PromptsSpec,
)
from astromesh_ray.spec.base import ConfigIssue, MetadataSpec, StrictModel
from astromesh_ray.spec.chain import ChainSpec, ChainStepSpec, output_json_schema
from astromesh_ray.spec.config import (
    ProviderConfigSpec,
    ProviderEntrySpec,
    ProviderRoutingSpec,
    RuntimeConfigSpec,
)
from astromesh_ray.spec.deployment import (
    AgentDeploymentSpec,
    AutoscalingSpec,
    DeploymentSpec,
    PlacementSpec,
    RayActorOptionsSpec,
)
from astromesh_ray.spec.directory import (
    LoadedConfig,
    load_config,
    load_from_environment,
    resolve_config_dir,
)
from astromesh_ray.spec.guardrails import GuardrailsSpec
from astromesh_ray.spec.loader import Document, load_agent, load_document
from astromesh_ray.spec.memory import MemorySpec
from astromesh_ray.spec.model import (
    ModelBlockSpec,
    ModelSpec,
    PricingSpec,
    RoleModelsSpec,
    RoutingSpec,
)
from astromesh_ray.spec.orchestration import BranchSpec, OrchestrationSpec, StageSpec
from astromesh_ray.spec.rag import RAGPipelineSpec
from astromesh_ray.spec.resolve import ModelEndpoint, ModelRoute, resolve_models, resolve_route
from astromesh_ray.spec.schema import json_schema
from astromesh_ray.spec.support import RULES, SupportIssue, check_support
from astromesh_ray.spec.tools import (
    AgentToolSpec,
    BuiltinToolSpec,
    InternalToolSpec,
    McpToolSpec,
    RagToolSpec,
    ToolSpec,
    WebhookToolSpec,
)
from astromesh_ray.spec.validation import validate_paths

__all__ = [
    "RULES",
    "AgentBodySpec",
    "AgentDeploymentSpec",
    "AgentSpec",
    "AgentToolSpec",
    "AutoscalingSpec",
    "BranchSpec",
    "BuiltinToolSpec",
    "ChainSpec",
    "ChainStepSpec",
    "ConfigIssue",
    "DeploymentSpec",
    "Document",
    "GuardrailsSpec",
    "IdentitySpec",
    "InternalToolSpec",
    "LoadedConfig",
    "McpToolSpec",
    "MemorySpec",
    "MetadataSpec",
    "ModelBlockSpec",
    "ModelEndpoint",
    "ModelRoute",
    "ModelSpec",
    "OrchestrationSpec",
    "PermissionsSpec",
    "PlacementSpec",
    "PricingSpec",
    "PromptsSpec",
    "ProviderConfigSpec",
    "ProviderEntrySpec",
    "ProviderRoutingSpec",
    "RAGPipelineSpec",
    "RagToolSpec",
    "RayActorOptionsSpec",
    "RoleModelsSpec",
    "RoutingSpec",
    "RuntimeConfigSpec",
    "StageSpec",
    "StrictModel",
    "SupportIssue",
    "ToolSpec",
    "WebhookToolSpec",
    "check_support",
    "json_schema",
    "load_agent",
    "load_config",
    "load_document",
    "load_from_environment",
    "output_json_schema",
    "resolve_config_dir",
    "resolve_models",
    "resolve_route",
    "validate_paths",
]
