"""The agent's CNI server alone, for bench/cni.py: ``python bench/cni_server.py NODE DATASTORE
SOCKET [HOST_NETNS]``; serves until SIGTERM. This is what ``tortie node run`` embeds, without the
rest of the agent (routes, BGP), so the benchmark times the CNI path only. It uses nothing but
``CniServer``'s constructor, so it also runs another tree's server (``PYTHONPATH=<tree>/src``)
for side-by-side figures."""

from __future__ import annotations

import signal
import sys
import threading

from tortie.agent.cniserver import CniServer
from tortie.datastore.factory import open_datastore
from tortie.ipam.client import IPAM

MTU = 1480  # IPIP's pod MTU on a 1500-byte uplink


def main(argv: list[str]) -> int:
    node, url, path = argv[:3]
    host_netns = argv[3] if len(argv) > 3 else None
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    store = open_datastore(url)
    server = CniServer(path, node, store, IPAM(store), lambda: MTU, host_netns=host_netns)
    server.start()
    try:
        done.wait()
    finally:
        server.stop()
        store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
