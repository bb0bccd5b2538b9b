"""The node agent: registers its Kubernetes node with the dispatcher and runs tasks in workers."""

from worker_agent.agent import Agent
from worker_agent.config import AgentConfig, resolve_node_name

__all__ = ["Agent", "AgentConfig", "resolve_node_name"]
