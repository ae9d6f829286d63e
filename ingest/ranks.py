"""The ranks of an ingest under torchrun: they meet within a bounded time, name the rank that is missing, and
stop on Ctrl-C.

torch.distributed's own waits do none of this: a lone rank waits silently (gloo's default timeout is 30
minutes), SIGINT is not seen while the main thread waits in C++, and a peer killed meanwhile ends the others
with gloo's raw text. So the ranks meet through the key-value store of the rendezvous (torchrun's agent
serves it; without an agent, rank 0 does, at MASTER_ADDR:MASTER_PORT), in Python loops that poll it:

- *Joining*: each rank sets `polysem/.../joined/<rank>`; rank 0 waits `timeout` seconds for every rank, then
  names the ranks that did not come ("ranks 1, 3 of 4 did not join within 300 s: ...") and tells the others.
- *Meeting* (`barrier`, `shared_from_rank0`): each rank sets its arrival key and waits for the others while
  they show signs of life: a helper thread of each rank counts a heartbeat key up every second, so a rank still
  working through its share is waited for however long that takes, and a rank whose heartbeat stopped for
  `timeout` seconds (killed, or its machine gone) is named: "rank 2 stopped ...". A rank that fails says so
  in the store (`failed`), and the others stop at once with its reason; when rank 0, which serves the store
  without an agent, stops, the others see its connection close (`_Sentinel`) and name it.
- *Ctrl-C*: the loops sleep in Python, where SIGINT arrives; what blocks in C++ (connecting to the store,
  the process group's init) runs in a helper thread while the main thread waits on an Event.

The process group (gloo on CPUs, nccl on GPUs) is still made, on the same store and with `timeout`, once
every rank has joined, for code that expects one; the ingest's own meetings do not use it.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from polysem.errors import RankError
from polysem.util.interrupt import interruptible

__all__ = ["DEFAULT_RANK_TIMEOUT", "RANK_TIMEOUT_MAX", "Ranks", "start_ranks"]

DEFAULT_RANK_TIMEOUT = 300.0  # seconds: for a rank to join, and for a silent rank to be declared stopped
RANK_TIMEOUT_MAX = 7 * 24 * 3600.0  # a week: longer waits are a mistake, and timedelta and C++ take them all
_POLL = 0.05  # seconds between looks at the store while waiting
_LOOK = 0.5  # seconds between looks at each missing rank's heartbeat and failure keys
_LEAVE_WAIT = 5.0  # seconds rank 0, when it holds the store, waits at the end for the other ranks to leave it
_KEPT = "the parts written so far are kept: run the same command again to resume"
_sessions = 0  # ingests started in this process: each meets under its own keys (a notebook may run several)
# the store rank 0 serves, kept for the process's life: a later ingest of this process meets on it again, where a
# new server on the same port could be taken for the old one by a rank still connecting
_served: dict[tuple[str, int], Any] = {}


class Ranks:
    """This process's rank among `world_size`, and the meetings of the ranks (`barrier`, `shared_from_rank0`);
    one rank alone meets nobody. `close()` at the end, whatever happened; `failed(error)` before it when the
    ingest failed, so that the other ranks stop too."""

    def __init__(self, rank: int = 0, world_size: int = 1, timeout: float = DEFAULT_RANK_TIMEOUT,
                 store: Any = None, prefix: str = "", hosts_store: bool = False, where: str = "",
                 sentinel: _Sentinel | None = None):
        self.rank, self.world_size, self.timeout = rank, world_size, timeout
        self.store, self.prefix, self.hosts_store, self.where = store, prefix, hosts_store, where
        self.sentinel = sentinel  # tells when the store's server (in another process) is gone
        self.own_group = False  # whether this ingest made the process group (and destroys it)
        self._meetings = 0
        self._gone: set[int] = set()  # ranks known not to be there (stopped)
        self._joined = False  # every rank joined
        self._beating = threading.Event()  # set: the heartbeat thread stops
        self._heart: threading.Thread | None = None

    def _key(self, *parts: object) -> str:
        return self.prefix + "/".join(map(str, parts))

    # -- joining ------------------------------------------------------------------------------------------

    def join(self) -> None:
        """Every rank's arrival within `timeout` seconds, or RankError naming the ranks missing."""
        self._set(self._key("joined", self.rank), b"1")
        if self.rank == 0:
            missing = self._wait_joined(time.monotonic() + self.timeout)
            self._set(self._key("joined-verdict"), ",".join(map(str, missing)).encode() or b"all")
        else:
            missing = self._wait_verdict()
        if missing:
            raise RankError(self._not_joined(missing))
        self._joined = True
        self._start_heartbeat()

    def _wait_joined(self, deadline: float) -> list[int]:
        """Rank 0: the ranks that have not joined at `deadline` ([] as soon as all have)."""
        keys = [self._key("joined", r) for r in range(self.world_size)]
        others = "rank 1" if self.world_size == 2 else f"ranks 1 to {self.world_size - 1}"
        with _interrupted(f"waiting for {others} to join; nothing was written"):
            while not self._check(keys):
                if time.monotonic() >= deadline:
                    return [r for r, key in enumerate(keys) if not self._check([key])]
                time.sleep(_POLL)
        return []

    def _wait_verdict(self) -> list[int]:
        """Another rank: rank 0's verdict on the joining (the ranks missing); without rank 0 within `timeout`
        seconds, the ranks this rank sees missing."""
        start = time.monotonic()
        verdict = self._key("joined-verdict")
        with _interrupted("waiting for rank 0 to see every rank join; nothing was written"):
            while not self._check([verdict]):
                waited = time.monotonic() - start
                # rank 0 decides within `timeout` of its own joining: wait for it that long after ours, and
                # at most twice that in all (rank 0 joined but stuck)
                if waited >= 2 * self.timeout or (waited >= self.timeout
                                                   and not self._check([self._key("joined", 0)])):
                    return [r for r in range(self.world_size) if not self._check([self._key("joined", r)])] or [0]
                time.sleep(_POLL)
            text = self._get(verdict).decode()
        return [] if text == "all" else [int(r) for r in text.split(",")]

    def _not_joined(self, missing: list[int]) -> str:
        names = ", ".join(map(str, missing))
        who = f"rank {names}" if len(missing) == 1 else f"ranks {names}"
        return (f"{who} of {self.world_size} did not join within {self.timeout:g} s: start every rank (torchrun "
                f"--nproc-per-node {self.world_size} on one machine, or on every node with --nnodes) or raise "
                "`rank_timeout`")

    # -- meetings ------------------------------------------------------------------------------------------

    def barrier(self, what: str) -> None:
        """Wait until every rank got here (`what`: where, for the messages)."""
        self._meet(what)

    def shared_from_rank0(self, value: Any, what: str) -> Any:
        """Rank 0's `value` on every rank (picklable), once every rank got here."""
        return self._meet(what, value)

    def _meet(self, what: str, value: Any = None) -> Any:
        if self.world_size <= 1:
            return value
        self._meetings += 1
        meeting = self._meetings
        if self.rank == 0:
            self._set(self._key("meet", meeting, "value"), pickle.dumps(value))
        self._set(self._key("meet", meeting, self.rank), b"1")
        keys = [self._key("meet", meeting, r) for r in range(self.world_size)]
        beats: dict[int, tuple[int, float]] = {}  # rank -> (heartbeat count, when it last changed)
        looked = time.monotonic()
        with _interrupted(f"waiting for the other ranks ({what}); {_KEPT}"):
            while not self._check(keys):
                now = time.monotonic()
                if now - looked >= _LOOK:
                    looked = now
                    self._look_at([r for r, key in enumerate(keys) if not self._check([key])], beats, now)
                time.sleep(_POLL)
            if self.rank != 0:
                value = pickle.loads(self._get(self._key("meet", meeting, "value")))
        return value

    def _look_at(self, missing: list[int], beats: dict[int, tuple[int, float]], now: float) -> None:
        """RankError when a rank not yet met has failed (its reason) or has been silent for `timeout` seconds."""
        for rank in missing:
            key = self._key("failed", rank)
            if self._check([key]):
                reason = self._get(key).decode(errors="replace")
                self._gone.add(rank)
                raise RankError(f"rank {rank} stopped ({reason}); {_KEPT}")
        silent = []
        for rank in missing:
            count = self._add(self._key("beat", rank), 0)
            if rank not in beats or beats[rank][0] != count:
                beats[rank] = (count, now)
            elif now - beats[rank][1] >= self.timeout:
                silent.append(rank)
        if silent:
            self._gone.update(silent)
            who = ", ".join(map(str, silent))
            raise RankError(f"{'rank' if len(silent) == 1 else 'ranks'} {who} stopped (no sign of "
                            f"{'it' if len(silent) == 1 else 'them'} for {self.timeout:g} s: killed, or its machine "
                            f"lost); {_KEPT}")

    # -- the end -------------------------------------------------------------------------------------------

    def failed(self, error: BaseException) -> None:
        """Tell the other ranks that this one stops, and why (best effort: the store may be gone)."""
        if self.store is None:
            return
        if isinstance(error, KeyboardInterrupt):
            reason = "interrupted"
        elif isinstance(error, RankError):
            reason = "it stopped waiting for the others"
        else:
            text = str(error).strip()
            reason = f"{type(error).__name__}: {text.splitlines()[0] if text else '(no message)'}"
        with contextlib.suppress(Exception):  # the store is gone: the others see this rank fall silent instead
            self._set(self._key("failed", self.rank), reason[:500].encode())

    def close(self) -> None:
        """Stop the heartbeat and leave the store; the rank that holds the store waits a moment for the others
        to leave it first (they may still be reading the last meeting's keys). Destroys the process group this
        ingest made."""
        self._beating.set()
        if self.store is not None:
            with contextlib.suppress(Exception):  # leaving a store that is gone
                self._set(self._key("left", self.rank), b"1")
                if self.hosts_store and self._joined:  # the ranks still there: all but those that stopped
                    keys = [self._key("left", r) for r in range(self.world_size) if r not in self._gone]
                    deadline = time.monotonic() + min(self.timeout, _LEAVE_WAIT)
                    while not self._check(keys) and time.monotonic() < deadline:
                        time.sleep(_POLL)
        if self.own_group and dist.is_initialized():
            dist.destroy_process_group()
        if self._heart is not None:
            self._heart.join(timeout=1)
        if self.sentinel is not None:
            self.sentinel.close()
        self.store = None

    # -- the heartbeat -------------------------------------------------------------------------------------

    def _start_heartbeat(self) -> None:
        """A daemon thread counting this rank's heartbeat key up every second, on its own store connection,
        until `close`: what tells the other ranks that this one is alive while it works between meetings."""
        store = self.store.clone()
        key = self._key("beat", self.rank)
        period = min(1.0, self.timeout / 4)

        def beat() -> None:
            while not self._beating.wait(period):
                if self.sentinel is not None and self.sentinel.gone():
                    return  # the meetings will say so
                try:
                    store.add(key, 1)
                except Exception:  # noqa: BLE001 -- the store is gone: the meetings will say so
                    return

        self._heart = threading.Thread(target=beat, name="polysem-rank-heartbeat", daemon=True)
        self._heart.start()

    # -- the store, its failures named -------------------------------------------------------------------------

    def _store_call(self, call: Callable[[], Any]) -> Any:
        # the sentinel first: a call to a store whose server is gone fails too, but torch logs a stack trace
        if self.sentinel is not None and self.sentinel.gone():
            self._store_gone("its connection closed")
        try:
            return call()
        except (RankError, KeyboardInterrupt):
            raise
        except Exception as error:  # noqa: BLE001 -- the store's server went away (its host stopped)
            self._store_gone(_first_line(error))

    def _store_gone(self, how: str) -> None:
        gone = f"the ranks' store at {self.where} is gone: {how}"
        if self.rank != 0 and not _agent_store():  # rank 0 served it
            raise RankError(f"rank 0 stopped ({gone}); {_KEPT}") from None
        raise RankError(f"{gone}; {_KEPT}") from None

    def _check(self, keys: list[str]) -> bool:
        return self._store_call(lambda: self.store.check(keys))

    def _get(self, key: str) -> bytes:
        return self._store_call(lambda: self.store.get(key))

    def _set(self, key: str, value: bytes) -> None:
        self._store_call(lambda: self.store.set(key, value))

    def _add(self, key: str, amount: int) -> int:
        return self._store_call(lambda: self.store.add(key, amount))


@contextlib.contextmanager
def _interrupted(what: str) -> Iterator[None]:
    """Ctrl-C during the block: a KeyboardInterrupt saying what was being waited for."""
    try:
        yield
    except KeyboardInterrupt as interrupt:
        if str(interrupt):
            raise
        raise KeyboardInterrupt(f"stopped while {what}") from None


class _Sentinel:
    """An idle connection to the store's server, which never sends on it: readable only once the server
    closed it, which it does when it stops (a server that merely dropped the idle connection still takes a new
    one). Lets a rank see that the store is gone without a call to it, which torch would log with a stack trace."""

    def __init__(self, address: str, port: int):
        self.address, self.port = address, port
        self._lock = threading.Lock()  # the main thread and the heartbeat's both ask
        self._socket: socket.socket | None = self._connect()

    def _connect(self) -> socket.socket | None:
        try:
            return socket.create_connection((self.address, self.port), timeout=1.0)
        except OSError:
            return None

    def gone(self) -> bool:
        with self._lock:
            if self._socket is None:
                return True
            readable, _, _ = select.select([self._socket], [], [], 0)
            if not readable:
                return False
            self._socket.close()
            self._socket = self._connect()
            return self._socket is None

    def close(self) -> None:
        with self._lock:
            if self._socket is not None:
                self._socket.close()


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _agent_store() -> bool:
    """Whether torchrun's agent serves the rendezvous store at MASTER_ADDR:MASTER_PORT."""
    return os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"


def _interruptible(work: Callable[[], Any], what: str) -> Any:
    """`work()` stoppable by Ctrl-C, for calls that block in C++ (connecting to the store, the process group's
    init); on Ctrl-C the call is left behind (a daemon thread: it ends with the process)."""
    return interruptible(work, f"stopped while {what}", name="polysem-rank-wait", poll=_POLL)


def start_ranks(device: torch.device, timeout: float) -> Ranks:
    """This process's Ranks: alone unless WORLD_SIZE (torchrun sets it, with RANK, MASTER_ADDR and MASTER_PORT)
    says more. Every rank joins within `timeout` seconds or RankError names the missing ones; then the
    process group is made (unless one exists): nccl when the ranks compute on GPUs, else gloo."""
    global _sessions
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Ranks()
    _sessions += 1
    prefix = f"polysem/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}/{_sessions}/"
    if dist.is_initialized():  # a script made the process group: meet on its store
        ranks = Ranks(dist.get_rank(), dist.get_world_size(), timeout, dist.distributed_c10d._get_default_store(),
                      prefix, where="the process group's store")
        ranks.join()
        return ranks
    ranks = _connect(world_size, timeout, prefix)
    try:
        ranks.join()
        if device.type == "cuda":
            torch.cuda.set_device(device)  # nccl's collectives use the current device: this rank's own
        try:
            _interruptible(lambda: dist.init_process_group(
                backend="nccl" if device.type == "cuda" else "gloo",
                store=dist.PrefixStore(prefix + "group", ranks.store), rank=ranks.rank, world_size=world_size,
                timeout=timedelta(seconds=timeout)), "the ranks made their process group; nothing was written")
        except (KeyboardInterrupt, RankError):
            raise
        except Exception as error:  # noqa: BLE001 -- torch's text, in one line, naming what failed
            raise RankError(f"the {world_size} ranks joined but could not make their process group "
                            f"({_first_line(error)}); run the same command again") from None
        ranks.own_group = True
    except BaseException as error:
        ranks.failed(error)
        ranks.close()
        raise
    return ranks


def _connect(world_size: int, timeout: float, prefix: str) -> Ranks:
    """This rank's connection to the rendezvous store: torchrun's agent serves it, or rank 0 (listening at
    MASTER_ADDR:MASTER_PORT without waiting for anyone: the joining does that, naming who is missing)."""
    rank = os.environ.get("RANK")
    address, port = os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT")
    if rank is None or not address or not port:
        unset = ", ".join(name for name, value in (("RANK", rank), ("MASTER_ADDR", address), ("MASTER_PORT", port))
                          if not value)
        raise RankError(f"WORLD_SIZE is {world_size} but {unset} {'is' if ',' not in unset else 'are'} not set: "
                        f"start the ranks with torchrun (torchrun --nproc-per-node {world_size} -m polysem.cli "
                        "ingest ...)")
    rank_number, where = int(rank), f"{address}:{port}"
    hosts = rank_number == 0 and not _agent_store()
    if not hosts:  # wait for the server here, where Ctrl-C reaches us (torch's retries also log stack traces)
        _wait_for_server(address, int(port), rank_number, world_size, timeout)
    try:
        if hosts and (address, int(port)) in _served:
            store = _served[address, int(port)]
            store.set_timeout(timedelta(seconds=timeout))
        else:
            store = _interruptible(lambda: dist.TCPStore(address, int(port), world_size, is_master=hosts,
                                                         timeout=timedelta(seconds=timeout), wait_for_workers=False,
                                                         multi_tenant=hosts),
                                   f"connecting to the ranks' store at {where}; nothing was written")
            if hosts:
                _served[address, int(port)] = store
    except KeyboardInterrupt:
        raise
    except Exception as error:  # noqa: BLE001 -- torch's network errors: named, in one line
        if hosts:
            raise RankError(f"rank 0 cannot serve the ranks' store at {where} ({_first_line(error)}); choose a free "
                            "port (torchrun --master-port)") from None
        raise RankError(f"rank {rank_number} cannot use the ranks' store at {where} ({_first_line(error)}); "
                        "check MASTER_ADDR and MASTER_PORT") from None
    return Ranks(rank_number, world_size, timeout, store, prefix, hosts_store=hosts, where=where,
                 sentinel=None if hosts else _Sentinel(address, int(port)))


def _wait_for_server(address: str, port: int, rank: int, world_size: int, timeout: float) -> None:
    """Until something listens at `address`:`port` (the store's server), for at most `timeout` seconds; then
    RankError: rank 0 (or torchrun's agent) is not there."""
    deadline = time.monotonic() + timeout
    with _interrupted(f"waiting for rank 0's store at {address}:{port}; nothing was written"):
        while True:
            try:
                with socket.create_connection((address, port), timeout=min(1.0, timeout)):
                    return
            except OSError:
                if time.monotonic() >= deadline:
                    break
                time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
    raise RankError(f"rank 0 of {world_size} did not join within {timeout:g} s (nothing listens at {address}:{port}, "
                    f"where rank {rank} looks for it): start every rank (torchrun --nproc-per-node {world_size} on "
                    "one machine, or on every node with --nnodes) or raise `rank_timeout`")
