"""``tortie install-cni``: put tortie's CNI plugins and conflist where a runtime finds them.

Problem: a container runtime (containerd, podman) needs the ``tortie`` and ``tortie-ipam``
executables in its CNI bin dir and a conflist in its conf dir that names the node and the
datastore the node agent uses. Values not given as options come from the environment, the
same way the agent and the plugin resolve them: ``--datastore`` (this command's, then the
global one), ``$TORTIE_DATASTORE``, the default; ``--nodename``, ``$TORTIE_NODENAME``,
``$NODENAME``, the hostname.

Invariant: files appear atomically (see :mod:`tortie.cni.install`); a runtime watching the
conf dir sees either the old conflist or the new one.
"""

from __future__ import annotations

import argparse
import os
import sys

from tortie.ctl.common import datastore_url


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from tortie.cni.install import CONFLIST_NAME, DEFAULT_CNI_VERSION, NETWORK_NAME
    from tortie.cni.spec import SUPPORTED_VERSIONS

    p = subparsers.add_parser(
        "install-cni",
        help="install the CNI plugins and the conflist for a container runtime",
        description=(
            f"Write the tortie and tortie-ipam plugins into --bin-dir and {CONFLIST_NAME} "
            f"(network {NETWORK_NAME}, chained with portmap) into --conf-dir."
        ),
    )
    p.add_argument("--bin-dir", required=True, metavar="DIR", help="the runtime's CNI bin dir")
    p.add_argument("--conf-dir", required=True, metavar="DIR", help="the runtime's CNI conf dir")
    # dest differs from the global --datastore: a subparser default would overwrite it.
    p.add_argument(
        "--datastore",
        dest="cni_datastore",
        metavar="URL",
        help="datastore the node agent uses (default: the global --datastore, "
        "$TORTIE_DATASTORE, or the default)",
    )
    p.add_argument(
        "--nodename", help="this node's name (default: $TORTIE_NODENAME, $NODENAME, hostname)"
    )
    p.add_argument("--mtu", type=int, help="pods' MTU (default: the one the node agent computes)")
    p.add_argument(
        "--agent-socket",
        metavar="PATH",
        help="the node agent's CNI socket (default: /run/tortie/<nodename>/cni.sock)",
    )
    p.add_argument(
        "--cni-version",
        default=DEFAULT_CNI_VERSION,
        choices=SUPPORTED_VERSIONS,
        help=f"the conflist's cniVersion (default {DEFAULT_CNI_VERSION}: containerd 1.6, "
        "podman and the reference plugins speak it; 1.1.0 adds GC and STATUS)",
    )
    p.set_defaults(func=_install_cni)


def _install_cni(args: argparse.Namespace) -> int:
    from tortie.cni import install
    from tortie.cni.config import environment_node
    from tortie.model.cnierrors import CniError

    datastore = args.cni_datastore or datastore_url(args)
    try:
        nodename = args.nodename or environment_node()
    except CniError as err:
        raise install.InstallError(f"cannot tell this node's name: {err.msg}") from None
    install.check_node_and_version(nodename, args.cni_version)
    if args.mtu is not None and not 68 <= args.mtu <= 65535:
        raise install.InstallError(f"--mtu {args.mtu} is out of range (68..65535)")
    if args.agent_socket and not os.path.isabs(args.agent_socket):
        raise install.InstallError("--agent-socket must be an absolute path")
    doc = install.conflist(
        nodename=nodename,
        datastore=datastore,
        mtu=args.mtu,
        agent_socket=args.agent_socket,
        cni_version=args.cni_version,
    )
    for path in install.install_executables(args.bin_dir):
        print(f"installed {path}")
    print(f"wrote {install.write_conflist(args.conf_dir, doc)} (node {nodename}, {datastore})")
    if not os.path.exists(os.path.join(args.bin_dir, "portmap")):
        print(
            f"warning: {args.bin_dir} has no portmap plugin, which the conflist chains; "
            "install Debian's containernetworking-plugins and link or copy it there",
            file=sys.stderr,
        )
    return 0
