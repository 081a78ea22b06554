"""carom.lab: the network-namespace lab (router, two directors, three real
servers, two clients) as code. See docs/lab.md.

    from carom.lab import Lab, topology
    with Lab() as lab:
        lab.exec("client1", ["curl", "-s", f"http://{topology.VIP4}/"])
"""

from carom.lab.lab import Lab, LabStatus, NodeStatus
from carom.lab.nodes import LabError

__all__ = ["Lab", "LabError", "LabStatus", "NodeStatus"]
