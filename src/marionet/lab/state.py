"""The lab's record of what it created, on disk before it is created.

Writing the intent first means a crash between "record" and "create" leaves
at worst a record of something absent (teardown tolerates that), never an
object nobody knows about.  ``lab down`` reads these files to clean up after
a crashed run and touches nothing that is not listed.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import system

STATE_DIR = Path(os.environ.get("MARIONET_LAB_STATE", "/run/marionet-lab"))


@dataclass
class State:
    lab_id: str
    path: Path
    name: str = "lab"
    owner_pid: int = field(default_factory=os.getpid)
    owner_start: int | None = None
    created: float = field(default_factory=time.time)
    netns: list[str] = field(default_factory=list)
    root_links: list[str] = field(default_factory=list)
    procs: list[dict[str, Any]] = field(default_factory=list)
    # files and then directories outside the state dir (/etc/netns/<ns>/resolv.conf)
    files: list[str] = field(default_factory=list)
    dirs: list[str] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)  # nodes → netns, addresses; for CLI use

    @classmethod
    def new(cls, lab_id: str, name: str, state_dir: Path | None = None) -> "State":
        d = state_dir or STATE_DIR
        d.mkdir(parents=True, exist_ok=True)
        st = cls(lab_id=lab_id, path=d / f"{lab_id}.json", name=name)
        st.owner_start = system.proc_starttime(st.owner_pid)
        return st

    @classmethod
    def load(cls, path: Path) -> "State":
        d = json.loads(path.read_text())
        return cls(lab_id=d["lab_id"], path=path, name=d.get("name", "lab"), owner_pid=d["owner_pid"],
                   owner_start=d.get("owner_start"), created=d.get("created", 0), netns=d.get("netns", []),
                   root_links=d.get("root_links", []), procs=d.get("procs", []), files=d.get("files", []),
                   dirs=d.get("dirs", []), info=d.get("info", {}))

    @property
    def truth_path(self) -> Path:
        return self.path.with_name(f"{self.lab_id}.truth.json")

    def owner_alive(self) -> bool:
        return system.alive(self.owner_pid, self.owner_start)

    def save(self) -> None:
        d = {
            "lab_id": self.lab_id, "name": self.name, "owner_pid": self.owner_pid,
            "owner_start": self.owner_start, "created": self.created, "netns": self.netns,
            "root_links": self.root_links, "procs": self.procs, "files": self.files, "dirs": self.dirs,
            "info": self.info,
        }
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(d, indent=1))
        os.replace(tmp, self.path)

    def add_proc(self, pid: int, role: str, node: str | None = None) -> None:
        self.procs.append({"pid": pid, "start": system.proc_starttime(pid), "role": role, "node": node})
        self.save()

    def remove(self) -> None:
        for p in (self.path, self.truth_path):
            try:
                p.unlink()
            except FileNotFoundError:
                pass


def all_states(state_dir: Path | None = None) -> list[State]:
    d = state_dir or STATE_DIR
    out = []
    for p in sorted(d.glob("*.json")) if d.exists() else []:
        if p.name.endswith(".truth.json"):
            continue
        try:
            out.append(State.load(p))
        except (ValueError, KeyError, OSError):
            continue
    return out


def teardown(st: State) -> list[str]:
    """Remove exactly what ``st`` lists; return a list of problems (empty when clean)."""
    problems: list[str] = []
    from .hooks import stop_leftovers

    stop_leftovers(st.path)
    # SIGTERM everything first so the processes end in parallel; stop_pid
    # below then only waits (and escalates to SIGKILL where needed)
    for pr in st.procs:
        if system.alive(pr["pid"], pr.get("start")):
            try:
                os.kill(pr["pid"], signal.SIGTERM)
            except ProcessLookupError:
                pass
    for pr in reversed(st.procs):
        try:
            system.stop_pid(pr["pid"], pr.get("start"))
        except Exception as e:  # keep going: the rest must still be removed
            problems.append(f"process {pr['pid']}: {e}")
    for name in reversed(st.root_links):
        if system.link_exists(name):
            cp = system.run(["ip", "link", "del", "dev", name], check=False)
            if cp.returncode != 0 and system.link_exists(name):
                problems.append(f"link {name}: {cp.stderr.strip()}")
    for f in reversed(st.files):
        try:
            os.unlink(f)
        except FileNotFoundError:
            pass
        except OSError as e:
            problems.append(f"file {f}: {e}")
    for d in reversed(st.dirs):
        try:
            os.rmdir(d)
        except FileNotFoundError:
            pass
        except OSError as e:
            if e.errno in (errno.ENOTEMPTY, errno.EEXIST):
                continue  # not empty: what another lab or a person put there stays
            problems.append(f"directory {d}: {e}")
    for ns in reversed(st.netns):
        if system.netns_exists(ns):
            cp = system.run(["ip", "netns", "del", ns], check=False)
            if cp.returncode != 0:
                problems.append(f"netns {ns}: {cp.stderr.strip()}")
    if not problems:
        st.remove()
        shutil.rmtree(st.path.with_suffix(".d"), ignore_errors=True)
    return problems
