"""Deterministic discrete-event network simulation for the PBFT replicas.

``run_scenario`` and ``bench_consensus`` (``pot_jax.network.scenario``) are the
entry points; ``Cluster`` + ``TimedNetwork`` or ``ManualNetwork`` the parts.
"""

from . import byzantine
from .checker import SafetyChecker, undecided
from .cluster import Cluster, ManualNetwork, Node
from .scenario import ScenarioConfig, bench_consensus, make_cluster, run_scenario
from .simulator import Latency, NetworkConfig, Partition, TimedNetwork

__all__ = [
    "Cluster",
    "Latency",
    "ManualNetwork",
    "NetworkConfig",
    "Node",
    "Partition",
    "SafetyChecker",
    "ScenarioConfig",
    "TimedNetwork",
    "bench_consensus",
    "byzantine",
    "make_cluster",
    "run_scenario",
    "undecided",
]
