"""A CNI server alone, in the namespace this process runs in (what ``tortie node run`` embeds):
``python serve_cni.py NODE DATASTORE SOCKET``; serves until SIGTERM. For tests that need the
server in another process (a node's namespace entered with ``ip netns exec``)."""

from __future__ import annotations

import signal
import sys
import threading

from tortie.agent.cniserver import CniServer
from tortie.datastore.factory import open_datastore
from tortie.ipam.client import IPAM


def main(node: str, url: str, path: str) -> int:
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    store = open_datastore(url)
    server = CniServer(path, node, store, IPAM(store), lambda: 1480)
    server.start()
    try:
        done.wait()
    finally:
        server.stop()
        store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:4]))
