"""``python build.py cloud up|status|down|restart``: the local test cloud as a background daemon.

``up`` prints the endpoints and credentials and writes ``<state-dir>/endpoints.json``; ``down`` stops the
daemon, every guest and the test bridge when no other cloud uses it (``--purge`` also deletes the state);
``restart`` keeps the guests running and re-attaches them. The state directory defaults to
``.cloud/default`` (``FLOWER_FACTORY_CLOUD_DIR``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from factory.cli.commands import Command
from hostkit.errors import ConfigError, FactoryError
from hostkit.paths import CLOUD_DIR

DRIVERS = ("auto", "dummy", "container", "qemu")
SERVICES = ("xmlrpc", "oneflow", "onegate", "market")
KEY_PREFIXES = ("ssh-", "ecdsa-", "sk-")  # OpenSSH public key types (ssh-ed25519, ecdsa-sha2-*, sk-*)
DEFAULT_KEYS = ("id_ed25519.pub", "id_ecdsa.pub", "id_rsa.pub")  # preferred first; then any other id_*.pub


# -- the user's SSH key (SSH_PUBLIC_KEY of the cloud user, as `oneuser update` sets it) ---------------------
def read_public_key(path: Path, option: str = "--ssh-key") -> str:
    """The first line of an OpenSSH public key file; a clear ConfigError for anything else."""
    try:
        text = path.read_text(errors="replace").strip()
    except OSError as error:
        raise ConfigError("command line", option, f"cannot read {path}: {error.strerror or error}") from None
    first = text.splitlines()[0].strip() if text else ""
    if not first.startswith(KEY_PREFIXES) or len(first.split()) < 2:
        raise ConfigError(
            "command line",
            option,
            f"{path} is not an OpenSSH public key (want one line like 'ssh-ed25519 AAAA... user@host')",
        )
    return first


def default_public_key(state_dir: Path, home: Path) -> tuple[Path, bool]:
    """``~/.ssh/id_*.pub`` if there is one, else a key pair made once in ``<state_dir>/ssh`` (reused later):
    (public key path, whether it is the generated one)."""
    ssh_dir = home / ".ssh"
    found = [ssh_dir / name for name in DEFAULT_KEYS if (ssh_dir / name).is_file()]
    found += sorted(p for p in ssh_dir.glob("id_*.pub") if p.is_file() and p not in found)
    if found:
        return found[0], False
    private = state_dir / "ssh" / "id_ed25519"
    public = private.with_name("id_ed25519.pub")
    if not public.is_file():
        private.parent.mkdir(parents=True, exist_ok=True)
        private.parent.chmod(0o700)
        private.unlink(missing_ok=True)
        try:
            subprocess.run(
                ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "flower-factory", "-f", str(private)],
                check=True,
                capture_output=True,
                timeout=60,
            )
        except FileNotFoundError:
            raise FactoryError("ssh-keygen: command not found (run scripts/setup.sh)") from None
        except subprocess.CalledProcessError as error:
            reason = error.stderr.decode(errors="replace").strip()
            raise FactoryError(f"ssh-keygen failed: {reason}") from None
    return public, True


def set_user_ssh_key(one: Any, key: str) -> int:
    """SSH_PUBLIC_KEY of the calling user, merged into its template as ``oneuser update --append`` does (the
    rest of the template, e.g. TOKEN_PASSWORD, stays); guests get it through ``$USER[SSH_PUBLIC_KEY]``."""
    user_id = int(one.user.info(-1).ID)
    quoted = key.replace('"', '\\"')  # a public key line holds no quotes; never let one end the value
    one.user.update(user_id, f'SSH_PUBLIC_KEY="{quoted}"', 1)
    return user_id


COMMAND = Command(
    "cloud",
    help="start, inspect or stop the local test cloud",
    description="Start (up), inspect (status), stop (down) or restart the local test cloud daemon.",
)


def arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="cloud_action", metavar="ACTION", required=True)
    for name, help_text in (
        ("up", "start the test cloud in the background and print its endpoints"),
        ("status", "say whether the test cloud runs, with its endpoints and VMs"),
        ("down", "stop the test cloud, its guests and the bridge"),
        ("restart", "restart the daemon; guests keep running and are re-attached"),
    ):
        action = actions.add_parser(name, help=help_text)
        action.add_argument("--state-dir", type=Path, default=CLOUD_DIR, help=f"default: {CLOUD_DIR}")
        if name in ("up", "restart"):
            action.add_argument(
                "--driver", default="auto", help=f"one of {', '.join(DRIVERS)} (default: auto)"
            )
            ports_help = "auto (free ports, reused on restart), default (2633, 2474, 5030, 8099), or "
            action.add_argument(
                "--ports", default="auto", help=ports_help + "xmlrpc=N,oneflow=N,onegate=N,market=N"
            )
            action.add_argument(
                "--ssh-key", type=Path, help="public key for the user template (SSH_PUBLIC_KEY)"
            )
        if name == "status":
            action.add_argument("--format", choices=("text", "json"), default="text")
        if name == "down":
            action.add_argument("--purge", action="store_true", help="also delete the state directory")


def _ports(value: str) -> str | dict[str, int]:
    if value in ("auto", "default"):
        return value
    ports: dict[str, int] = {}
    for item in value.split(","):
        name, _, number = item.partition("=")
        if name not in SERVICES or not number.isdigit() or not 0 < int(number) < 65536:
            raise ConfigError("command line", "--ports", f"bad item '{item}' (want service=port, services: "
                                                          f"{', '.join(SERVICES)})")  # fmt: skip
        ports[name] = int(number)
    return ports


def _set_key_on(endpoints: dict[str, Any], key: str) -> None:
    import pyone

    set_user_ssh_key(pyone.OneServer(endpoints["xmlrpc"], session=endpoints["auth"], timeout=30), key)


def _print_endpoints(state_dir: Path, endpoints: dict[str, str], driver: str) -> None:
    print(f"test cloud running (driver {driver}, state {state_dir})")
    for label, key in (
        ("XML-RPC", "xmlrpc"),
        ("OneFlow", "oneflow"),
        ("OneGate", "onegate"),
        ("Market", "market"),
    ):
        print(f"  {label:<8} {endpoints[key]}")
    print(f"  auth     {endpoints['auth']}  (also in {state_dir / 'one_auth'})")
    print(f"  file     {state_dir / 'endpoints.json'}")
    auth_file = state_dir / "one_auth"
    print(f"export ONE_XMLRPC={endpoints['xmlrpc']} ONEFLOW_URL={endpoints['oneflow']} ONE_AUTH={auth_file}")


def run(args: argparse.Namespace) -> int:
    from hostkit.progress import DEFAULT as progress
    from testcloud import launcher

    state_dir = args.state_dir.resolve()
    action = args.cloud_action
    if action in ("up", "restart"):
        if args.driver not in DRIVERS:
            raise ConfigError(
                "command line", "--driver", f"unknown driver '{args.driver}' (known: {', '.join(DRIVERS)})"
            )
        ports = _ports(args.ports)
        ssh_key = read_public_key(args.ssh_key) if args.ssh_key is not None else ""
        if action == "restart":
            with progress.stage("stopping the test cloud daemon (guests keep running)"):
                launcher.stop_daemon(state_dir, keep_guests=True)
        elif launcher.daemon_pid(state_dir) is not None:
            document = launcher.read_endpoints(state_dir) or {}
            if all(k in document for k in (*SERVICES, "auth")):
                if ssh_key:  # a cloud already up keeps its user: set the key as `oneuser update` would
                    _set_key_on(document, ssh_key)
                _print_endpoints(state_dir, document, document.get("driver", "?"))
                return 0
        with progress.stage(f"starting the test cloud ({args.driver}) in {state_dir}"):
            try:
                handle = launcher.start(state_dir, ports=ports, driver=args.driver, background=True,
                                        ssh_public_key=ssh_key)  # fmt: skip
            except launcher.LaunchError as error:
                raise FactoryError(str(error)) from None
        if ssh_key:  # also when the state directory already has its user (the key only seeds a new one)
            _set_key_on(handle.endpoints, ssh_key)
        _print_endpoints(state_dir, handle.endpoints, args.driver)
        return 0
    if action == "status":
        return _status(state_dir, args.format)
    pid = launcher.daemon_pid(state_dir)
    if pid is None:
        print(f"no test cloud runs on {state_dir}")
    else:
        with progress.stage(f"stopping the test cloud (pid {pid}) and its guests"):
            launcher.stop_daemon(state_dir, keep_guests=False)
    if args.purge and state_dir.exists():
        if not (state_dir / "db").is_dir():
            raise FactoryError(
                f"{state_dir} does not look like a test cloud state directory; not deleting it"
            )
        shutil.rmtree(state_dir)
        print(f"deleted {state_dir}")
    return 0


def _status(state_dir: Path, output: str) -> int:
    from testcloud import launcher

    pid = launcher.daemon_pid(state_dir)
    document = launcher.read_endpoints(state_dir) if pid is not None else None
    if pid is None or document is None:
        if output == "json":
            print(json.dumps({"running": False, "state_dir": str(state_dir)}))
        else:
            print(f"no test cloud runs on {state_dir}")
        return 1
    counts: dict[str, int] = {}
    try:
        import pyone

        one = pyone.OneServer(document["xmlrpc"], session=document["auth"])
        names = dict(enumerate(("INIT", "PENDING", "HOLD", "ACTIVE", "STOPPED", "SUSPENDED", "DONE", "FAILED",
                                "POWEROFF", "UNDEPLOYED", "CLONING", "CLONING_FAILURE")))  # fmt: skip
        for vm in one.vmpool.info(-2, -1, -1, -1).VM:
            counts[names.get(vm.STATE, str(vm.STATE))] = counts.get(names.get(vm.STATE, str(vm.STATE)), 0) + 1
    except Exception as error:  # a status report must not die on a sick cloud
        print(f"warning: the XML-RPC endpoint does not answer: {error}", file=sys.stderr)
    if output == "json":
        public = {k: v for k, v in document.items() if k != "auth"}
        print(json.dumps({"running": True, "state_dir": str(state_dir), **public, "vms": counts}, indent=2))
        return 0
    _print_endpoints(state_dir, document, document.get("driver", "?"))
    print("  VMs      " + (", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "none"))
    return 0
