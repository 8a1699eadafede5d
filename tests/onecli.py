"""Run OpenNebula's own Ruby CLI and OCA, unchanged, against a running test cloud.

The CLI comes from upstream source (``UPSTREAM_DIR/one``, setting ``ONE_UPSTREAM_DIR``, hostkit/upstream.py)
laid out as OpenNebula's ``install.sh`` lays out a self-contained install (``ONE_LOCATION``):

- ``lib/ruby/opennebula.rb`` and ``lib/ruby/opennebula/``: the OCA (``src/oca/ruby``)
- ``lib/ruby/cli/*.rb`` and ``lib/ruby/cli/one_helper/``: the CLI's libraries (``src/cli``)
- ``lib/ruby/cloud/CloudClient.rb``: what ``oneflow_client.rb`` requires (``src/cloud/common``)
- ``lib/ruby/load_opennebula_paths.rb``: the stub ``share/rubygems`` ships for gem installs
- ``etc/cli/``: the table layouts (``src/cli/etc``); ``share/schemas/xsd``: the XSDs; ``bin/``: the commands

Everything is a symlink into the upstream tree: nothing is copied into the project. The gems the CLI needs
come from Debian (ruby-xmlrpc, ruby-nokogiri, ruby-activesupport, ruby-parse-cron, ruby-ipaddress,
ruby-treetop;
``scripts/setup.sh``).

The commands read their endpoints from the environment as upstream documents: ``ONE_XMLRPC``, ``ONE_AUTH``
(a file holding ``user:password``), ``ONEFLOW_URL``, ``ONEFLOW_USER``, ``ONEFLOW_PASSWORD``
(``src/oca/ruby/opennebula/lib/client.rb``, ``src/oca/ruby/opennebula/oneflow_client.rb``).
"""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hostkit.paths import UPSTREAM_DIR

UPSTREAM_ONE = UPSTREAM_DIR / "one"


def _link(target: Path, link: Path) -> None:
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(target)


def build_one_location(root: Path, upstream: Path = UPSTREAM_ONE) -> Path:
    """Lay out ``ONE_LOCATION`` under ``root`` (not existing yet) as ``install.sh`` does; returns it."""
    src = upstream / "src"
    root.mkdir(parents=True)
    ruby = root / "lib" / "ruby"
    _link(src / "oca" / "ruby" / "opennebula.rb", ruby / "opennebula.rb")
    _link(src / "oca" / "ruby" / "opennebula", ruby / "opennebula")
    for library in sorted((src / "cli").glob("*.rb")):
        _link(library, ruby / "cli" / library.name)
    _link(src / "cli" / "one_helper", ruby / "cli" / "one_helper")
    _link(src / "cloud" / "common" / "CloudClient.rb", ruby / "cloud" / "CloudClient.rb")
    _link(upstream / "share" / "rubygems" / "load_opennebula_paths.rb", ruby / "load_opennebula_paths.rb")
    _link(src / "cli" / "etc", root / "etc" / "cli")
    _link(upstream / "share" / "doc" / "xsd", root / "share" / "schemas" / "xsd")
    for command in sorted((src / "cli").iterdir()):
        if command.is_file() and command.name.startswith("one") and command.suffix == "":
            _link(command, root / "bin" / command.name)
    (root / "var").mkdir()
    return root


_VALIDATE_SERVICE_TEMPLATE = """
require 'opennebula'
require 'opennebula/flow'
require 'json'
body = JSON.parse(STDIN.read)
begin
  OpenNebula::ServiceTemplate.validate(body)
rescue StandardError => e
  abort(e.message)
end
"""


@dataclass(frozen=True)
class OneCli:
    """The CLI installed under ``location``, pointed at one test cloud."""

    location: Path
    home: Path
    env: Mapping[str, str]

    @property
    def _process(self) -> dict[str, Any]:
        """How every ruby this CLI starts runs: in its environment (ONE_LOCATION, ONE_AUTH ...), from its
        HOME, with no other file descriptor (a terminal's other end would keep it open)."""
        return {"env": dict(self.env), "cwd": self.home, "close_fds": True}

    def run(
        self, *argv: str, input: str | None = None, timeout: float = 120.0, check: bool = False
    ) -> subprocess.CompletedProcess[str]:
        """Run one command, e.g. ``run("onevm", "show", "0", "-x")``; text in, text out, never a shell."""
        command, *args = argv
        script = self._command(command)
        return self._ruby([str(script), *args], input, timeout, check)

    def interact(self, *argv: str, dialog: list[tuple[str, str]], timeout: float = 120.0) -> tuple[int, str]:
        """Run a command on a terminal and answer its prompts: for each ``(prompt, answer)`` wait until
        ``prompt`` shows, then type ``answer`` and Enter. Returns the exit status and all it printed. A
        terminal, not a pipe: the CLI reads a pipe whole as a template (``OpenNebulaHelper.read_stdin``)."""
        command, *args = argv
        script = self._command(command)
        controller, terminal = pty.openpty()
        process = subprocess.Popen(
            ["ruby", str(script), *args], stdin=terminal, stdout=terminal, stderr=terminal, **self._process
        )
        os.close(terminal)
        deadline = time.monotonic() + timeout
        transcript = ""
        position = 0
        try:
            for prompt, answer in dialog:
                while (found := transcript.find(prompt, position)) < 0:
                    if process.poll() is not None:
                        transcript += self._drain(controller)
                        if transcript.find(prompt, position) < 0:
                            return process.wait(), transcript
                        continue
                    transcript += self._read(controller, deadline)
                position = found + len(prompt)
                os.write(controller, answer.encode() + b"\n")
            while process.poll() is None:
                transcript += self._read(controller, deadline)
            return process.wait(), transcript + self._drain(controller)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
            os.close(controller)

    @classmethod
    def _drain(cls, fd: int) -> str:
        text = ""
        while chunk := cls._read(fd, time.monotonic() + 1):
            text += chunk
        return text

    @staticmethod
    def _read(fd: int, deadline: float) -> str:
        if time.monotonic() > deadline:
            raise TimeoutError("the command did not show the expected prompt in time")
        ready, _, _ = select.select([fd], [], [], 0.2)
        if not ready:
            return ""
        try:
            return os.read(fd, 65536).decode(errors="replace")
        except OSError:  # the terminal closed: the command ended
            return ""

    def _command(self, command: str) -> Path:
        script = self.location / "bin" / command
        if not script.exists():
            raise ValueError(f"no such OpenNebula command: {command}")
        return script

    def ruby(
        self, code: str, *args: str, input: str | None = None, timeout: float = 120.0, check: bool = False
    ) -> subprocess.CompletedProcess[str]:
        """Run Ruby ``code`` with the OCA on its load path (``require 'opennebula'``; ``ARGV`` = ``args``)."""
        return self._ruby(["-e", code, "--", *args], input, timeout, check)

    def validate_service_template(self, body: Mapping[str, object]) -> str | None:
        """What the OCA's ``ServiceTemplate.validate`` (``src/oca/ruby/opennebula/flow/service_template.rb``)
        says of a service template body: None when it passes, else its message. ``onemarketapp export`` of a
        SERVICE_TEMPLATE app runs it on the app's JSON *after* exporting the roles' apps, and leaves those
        behind when it fails: a published body must pass it."""
        done = self._ruby(["-e", _VALIDATE_SERVICE_TEMPLATE], json.dumps(body), 60.0, False)
        if done.returncode == 0:
            return None
        return done.stderr.strip() or f"ruby exited with {done.returncode}"

    def _ruby(
        self, argv: list[str], input: str | None, timeout: float, check: bool
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ruby", *argv],
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=check,
            **self._process,
        )


def one_cli(location: Path, work: Path, endpoints: Mapping[str, str]) -> OneCli:
    """A CLI on ``location`` (from ``build_one_location``) for a cloud's ``endpoints``
    (``CloudHandle.endpoints``: ``xmlrpc``, ``oneflow``, ``auth`` = ``user:password``); ``work`` is a fresh
    folder for HOME and the ONE_AUTH file."""
    work.mkdir(parents=True, exist_ok=True)
    auth_file = work / "one_auth"
    auth_file.write_text(endpoints["auth"] + "\n")
    auth_file.chmod(0o600)
    user, _, password = endpoints["auth"].partition(":")
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(work),
        "LANG": "C.UTF-8",
        "ONE_LOCATION": str(location),
        "RUBYLIB": str(location / "lib" / "ruby"),
        "ONE_XMLRPC": endpoints["xmlrpc"],
        "ONE_AUTH": str(auth_file),
        "ONEFLOW_URL": endpoints["oneflow"],
        "ONEFLOW_USER": user,
        "ONEFLOW_PASSWORD": password,
    }
    return OneCli(location, work, env)
