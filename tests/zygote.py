"""`python -m polysem.cli ...` processes forked from one process that imported torch, torchvision and polysem once.

A fresh interpreter spends about 3 s of CPU importing torch and torchvision before a command does anything; the
kill-and-resume, rank and concurrency scenarios start a dozen such processes. Each worker of the suite starts one
server (`python -m tests.zygote SOCKET`) that sets the process up as the `polysem` command does
(`configure_cli_process`), imports what a command imports and waits, single-threaded, so that forking it is
safe; `polysem_process` asks it for a child, which takes the test's arguments, environment, working folder and
standard streams, and runs `polysem.cli.main` as `python -m polysem.cli` would. The child is a real process of
its own: a test can kill it, interrupt it, or run several at once. What depends on a fresh interpreter (what
happens before torch loads, module discovery from another folder, torchrun's own children) keeps
`subprocess.Popen`.
"""

from __future__ import annotations

import atexit
import io
import json
import os
import select
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PIPE, STDOUT, DEVNULL = subprocess.PIPE, subprocess.STDOUT, subprocess.DEVNULL
PRELOAD = ("torch", "torchvision", "torch.distributed", "polysem.cli.app", "polysem.ingest.run", "polysem.ingest.job",
           "polysem.ingest.pipeline", "polysem.ingest.ranks", "polysem.ingest.dataset", "pyarrow.parquet",
           "tests.models")


# -- the server ---------------------------------------------------------------------------------------------------

def _child(request: dict, fds: list[int], base_path: list[str]) -> None:
    """In the forked child: become `python -m polysem.cli ARGS` with the request's streams, folder and environment;
    never returns."""
    code = 1
    try:
        for target, fd in zip((0, 1, 2), fds):
            os.dup2(fd, target)
        for fd in fds:
            os.close(fd)
        os.chdir(request["cwd"])
        # Ctrl-C raises KeyboardInterrupt, as in `python -m polysem.cli` started from a terminal, even when the
        # suite itself was started with SIGINT ignored (a background job of a non-interactive shell)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        os.environ.clear()
        os.environ.update(request["env"])
        pythonpath = [p for p in request["env"].get("PYTHONPATH", "").split(os.pathsep) if p]
        sys.path[:] = [request["cwd"], *pythonpath, *base_path]
        sys.path_importer_cache.clear()
        sys.argv = ["-c" if request["code"] is not None else "polysem", *request["args"]]
        unbuffered = request["unbuffered"]
        sys.stdin = io.TextIOWrapper(open(0, "rb", closefd=False), encoding="utf-8")
        sys.stdout = io.TextIOWrapper(open(1, "wb", buffering=0 if unbuffered else -1, closefd=False),
                                      encoding="utf-8", write_through=unbuffered)
        sys.stderr = io.TextIOWrapper(open(2, "wb", buffering=0 if unbuffered else -1, closefd=False),
                                      encoding="utf-8", errors="backslashreplace", line_buffering=True)
        try:
            if request["code"] is not None:  # python -c CODE ARGS
                module = types.ModuleType("__main__")
                sys.modules["__main__"] = module
                exec(compile(request["code"], "<string>", "exec"), module.__dict__)
            else:
                from polysem.cli import main

                main()
            code = 0
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
            if not isinstance(stop.code, (int, type(None))):
                print(stop.code, file=sys.stderr)
        except KeyboardInterrupt:
            traceback.print_exc()
            code = -signal.SIGINT
        except BaseException:
            traceback.print_exc()
            code = 1
        try:
            atexit._run_exitfuncs()
        except BaseException:
            traceback.print_exc()
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except BaseException:
                pass
    finally:
        if code == -signal.SIGINT:  # as Python ends on an uncaught KeyboardInterrupt: killed by SIGINT
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGINT)
        os._exit(code if 0 <= code < 256 else 1)


def serve(path: str) -> None:
    """Import, then fork a child per request on the unix socket at `path`; answer each with the child's pid, then
    its exit code (negative: the signal that ended it), as subprocess reports them."""
    from polysem.util.process import configure_cli_process

    configure_cli_process()
    import importlib

    for name in PRELOAD:
        importlib.import_module(name)
    base_path = list(sys.path[1:])  # what follows the folder of `-m tests.zygote` (the repository root)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(16)
    print("ready", flush=True)
    waiting: dict[int, socket.socket] = {}
    parent = os.getppid()
    while os.getppid() == parent:  # a pytest worker that died without stopping it: stop too
        readable = selectors.DefaultSelector()
        readable.register(listener, selectors.EVENT_READ)
        if readable.select(timeout=0.02):
            conn, _ = listener.accept()
            message, fds, _, _ = socket.recv_fds(conn, 1 << 20, 3)
            request = json.loads(message)
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                listener.close()
                conn.close()
                _child(request, fds, base_path)
            for fd in fds:
                os.close(fd)
            conn.sendall(json.dumps({"pid": pid}).encode() + b"\n")
            waiting[pid] = conn
        readable.close()
        while waiting:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            conn = waiting.pop(pid, None)
            if conn is not None:
                try:
                    conn.sendall(json.dumps({"returncode": os.waitstatus_to_exitcode(status)}).encode() + b"\n")
                except OSError:
                    pass  # the test stopped listening
                conn.close()


# -- the client -----------------------------------------------------------------------------------------------------

_server: dict[str, object] = {}
_server_lock = threading.Lock()


def _socket_path() -> str:
    with _server_lock:
        if "path" not in _server:
            folder = tempfile.mkdtemp(prefix="polysem-zygote-")
            path = os.path.join(folder, "socket")
            env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
            process = subprocess.Popen([sys.executable, "-m", "tests.zygote", path], cwd=ROOT, env=env,
                                       stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True)
            if process.stdout.readline().strip() != "ready":
                raise RuntimeError("the zygote server did not start")

            def stop() -> None:
                process.kill()
                process.wait()

            atexit.register(stop)
            _server.update(path=path, process=process)
        return str(_server["path"])


class Child:
    """The part of subprocess.Popen the tests use, for a child of the zygote server."""

    def __init__(self, args, *, env: dict, cwd: str | os.PathLike = ROOT, stdout=PIPE, stderr=STDOUT,
                 text: bool = False, unbuffered: bool = False, code: str | None = None):
        self.args, self.returncode, self.text = [str(a) for a in args], None, text
        self.stdout = self.stderr = None
        ends, mine = [], []  # the child's standard streams; what this process keeps
        ends.append(os.open(os.devnull, os.O_RDONLY))
        out_read = err_read = None
        if stdout is PIPE:
            out_read, out_write = os.pipe()
            ends.append(out_write)
            mine.append(out_read)
        else:
            ends.append(os.open(os.devnull, os.O_WRONLY))
        if stderr is STDOUT:
            ends.append(os.dup(ends[1]))
        elif stderr is PIPE:
            err_read, err_write = os.pipe()
            ends.append(err_write)
        else:
            ends.append(os.open(os.devnull, os.O_WRONLY))
        request = {"args": self.args, "code": code, "env": {k: str(v) for k, v in env.items()}, "cwd": str(cwd),
                   "unbuffered": unbuffered}
        self._conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._conn.connect(_socket_path())
            socket.send_fds(self._conn, [json.dumps(request).encode()], ends)
        finally:
            for fd in ends:
                os.close(fd)
        self._buffer = b""
        self.pid = json.loads(self._reply(None))["pid"]
        mode = "r" if text else "rb"
        if out_read is not None:
            self.stdout = open(out_read, mode)
        if err_read is not None:
            self.stderr = open(err_read, mode)

    def _reply(self, timeout: float | None) -> bytes | None:
        """The server's next line, waiting up to `timeout` seconds (None: as long as it takes); None if none came."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while b"\n" not in self._buffer:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not select.select([self._conn], [], [], left)[0]:
                return None
            data = self._conn.recv(4096)
            if not data:
                raise RuntimeError("the zygote server closed the connection without an answer")
            self._buffer += data
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line

    def poll(self) -> int | None:
        if self.returncode is None:
            line = self._reply(0)
            if line is not None:
                self.returncode = json.loads(line)["returncode"]
                self._conn.close()
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            line = self._reply(timeout)
            if line is None:
                raise subprocess.TimeoutExpired(self.args, timeout)
            self.returncode = json.loads(line)["returncode"]
            self._conn.close()
        return self.returncode

    def communicate(self, timeout: float | None = None):
        """(stdout, stderr) read to their end, then the exit awaited, as Popen.communicate."""
        deadline = None if timeout is None else time.monotonic() + timeout
        streams = {s: [] for s in (self.stdout, self.stderr) if s is not None}
        selector = selectors.DefaultSelector()
        for stream in streams:
            selector.register(stream.fileno(), selectors.EVENT_READ, stream)
        while selector.get_map():
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise subprocess.TimeoutExpired(self.args, timeout)
            for key, _ in selector.select(left):
                data = os.read(key.fd, 1 << 16)
                if data:
                    streams[key.data].append(data)
                else:
                    selector.unregister(key.fd)
        selector.close()
        self.wait(None if deadline is None else max(0.0, deadline - time.monotonic()))
        results = []
        for stream in (self.stdout, self.stderr):
            if stream is None:
                results.append(None)
                continue
            data = b"".join(streams[stream])
            results.append(data.decode() if self.text else data)
            stream.close()
        return tuple(results)

    def __del__(self) -> None:
        """The pipes a test left unread closed with the object (Popen's would warn about them later, in another
        test)."""
        for name in ("stdout", "stderr", "_conn"):  # absent where __init__ failed before it
            if getattr(self, name, None) is not None:
                getattr(self, name).close()

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


def polysem_process(*args, env: dict | None = None, cwd: str | os.PathLike = ROOT, stdout=PIPE, stderr=STDOUT,
                    text: bool = False, unbuffered: bool = False) -> Child:
    """`python -m polysem.cli ARGS` (`env`: its whole environment, default this process's), forked from the
    worker's zygote server."""
    return Child(args, env=dict(os.environ) if env is None else env, cwd=cwd, stdout=stdout, stderr=stderr,
                 text=text, unbuffered=unbuffered)


def python_process(code: str, *args, env: dict | None = None, cwd: str | os.PathLike = ROOT, stdout=PIPE,
                   stderr=STDOUT, text: bool = False) -> Child:
    """`python -c CODE ARGS`, forked from the worker's zygote server (torch, torchvision and polysem imported)."""
    return Child(args, env=dict(os.environ) if env is None else env, cwd=cwd, stdout=stdout, stderr=stderr,
                 text=text, code=code)


def run(*args, timeout: float, code: str | None = None, **kwargs) -> subprocess.CompletedProcess:
    """subprocess.run(python -m polysem.cli ARGS, capture_output=True), or of `python -c CODE ARGS`, in a child of
    the server."""
    child = (python_process(code, *args, stdout=PIPE, stderr=PIPE, **kwargs) if code is not None
             else polysem_process(*args, stdout=PIPE, stderr=PIPE, **kwargs))
    try:
        out, err = child.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()
        raise
    return subprocess.CompletedProcess(child.args, child.returncode, out, err)


if __name__ == "__main__":
    serve(sys.argv[1])
