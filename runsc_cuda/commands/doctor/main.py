"""``runsc-cuda doctor``: why would a checkpoint fail on this host?

``gather`` does all the I/O; the checks are pure functions of the facts it
returns, so tests feed them fake hosts.  The exit status is 1 when a required
check fails.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence

from runsc_cuda import layout
from runsc_cuda.commands.doctor.checks import (
    Check,
    check_config,
    check_cuda_checkpoint,
    check_driver,
    check_runsc,
    check_state_dir,
    exit_status,
)
from runsc_cuda.commands.doctor.facts import Facts
from runsc_cuda.commands.doctor.gather import gather
from runsc_cuda.commands.doctor.integrations import check_containerd, check_criu, check_docker
from runsc_cuda.commands.doctor.kubernetes import KubeFacts, check_kubernetes, gather_kubernetes
from runsc_cuda.commands.doctor.render import render_json, render_text, symbols_for
from runsc_cuda.oci.argv import CommandLine

INTEGRATIONS = ("docker", "containerd", "kubernetes")
NEEDS_SESSION = False  # doctor reports what would make opening a session fail


def checks(f: Facts, require: Sequence[str] = (), kube: KubeFacts | None = None) -> list[Check]:
    """Every check, in the order they are shown (the Kubernetes node's with ``kube``)."""
    wanted = set(require)
    node = check_kubernetes(f, kube, "kubernetes" in wanted) if kube is not None else []
    return [
        *check_config(f),
        *check_state_dir(f),
        *check_runsc(f),
        *check_cuda_checkpoint(f),
        *check_driver(f),
        *check_docker(f, "docker" in wanted),
        *check_containerd(f, bool(wanted & {"containerd", "kubernetes"})),
        *check_criu(f, "kubernetes" in wanted),
        *node,
    ]


def parse_args(args: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="runsc-cuda doctor",
        description="Check this host for what GPU checkpoint/restore under gVisor needs.",
    )
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--docker-config", default=layout.DOCKER_CONFIG, help="Docker's daemon.json")
    parser.add_argument("--containerd-config", default=layout.CONTAINERD_CONFIG, help="containerd's config.toml")
    parser.add_argument("--proc-driver-nvidia", default=None, help="the NVIDIA driver's /proc folder (default: config)")
    parser.add_argument(
        "--require",
        action="append",
        default=[],
        metavar="|".join(INTEGRATIONS),
        help="make the checks for this engine required (repeat or comma-separate)",
    )
    ns = parser.parse_args(list(args))
    names = [n.strip() for item in ns.require for n in item.split(",") if n.strip()]
    unknown = [n for n in names if n not in INTEGRATIONS]
    if unknown:
        parser.error(f"--require: unknown {', '.join(unknown)} (choose from {', '.join(INTEGRATIONS)})")
    ns.require = names
    return ns


def main(cmd: CommandLine, environ: Mapping[str, str]) -> int:
    """``runsc-cuda [global flags] doctor [--json] ...``: exit 1 when a required check fails."""
    try:
        ns = parse_args(cmd.rest)
    except SystemExit as e:  # argparse: --help (0) or a usage error (2)
        return int(e.code or 0)
    facts = gather(
        environ,
        cmd.global_tokens(),
        docker_config=ns.docker_config,
        containerd_config=ns.containerd_config,
        proc_dir=ns.proc_driver_nvidia,
    )
    kube = None
    if "kubernetes" in ns.require:
        from runsc_cuda.commands.doctor.gather import _probe
        from runsc_cuda.runner import Runner

        runner = Runner(environ)
        kube = gather_kubernetes(facts, lambda argv: _probe(runner, argv), environ.get("PATH"))
    results = checks(facts, ns.require, kube)
    out = render_json(results) if ns.json else render_text(results, symbols_for(sys.stdout))
    sys.stdout.write(out)
    sys.stdout.flush()
    return exit_status(results)
