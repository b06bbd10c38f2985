"""`starsrec serve --workers N`: N processes answering on one port, sharing what was loaded.

The parent loads the artifact once, opens one listening socket per worker on the port
(SO_REUSEPORT: the kernel spreads new connections over them), freezes what it loaded out of
the collector and forks; each worker answers on its own socket and reads the model, the
index and the item table from the parent's pages: copy-on-write, shared for as long as
nobody writes them. Each worker opens its own event-store connection
(a connection must not cross a fork) and follows the product log and the store's forgets
(`starsrec.web.app`), so a product put or a user forgotten through one worker reaches all.

The parent only supervises:
- SIGHUP is forwarded to every worker: each reloads the artifact while it keeps answering.
- POST /v1/admin/reload reloads the worker that took it, which then signals the parent
  (SIGUSR1); the parent sends SIGHUP to the other workers.
- SIGTERM or SIGINT is forwarded; the parent waits for the workers and exits.
- A worker that exits on its own stops the others, and the parent exits with status 1: run
  the server under something that restarts it (systemd, a container runtime).
Workers die with the parent (Linux PR_SET_PDEATHSIG), so killing the parent leaves no
orphan serving. After a reload each worker holds its own copy of what it loaded.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import socket
from collections.abc import Callable, Iterator

logger = logging.getLogger(__name__)

SUPERVISED = {signal.SIGHUP, signal.SIGUSR1, signal.SIGTERM, signal.SIGINT, signal.SIGCHLD}
_PR_SET_PDEATHSIG = 1  # linux/prctl.h


@contextlib.contextmanager
def held_signals() -> Iterator[None]:
    """Queue the signals the supervisor waits for instead of acting on them, until the
    block exits. Enter it before anything starts threads (loading does): a thread inherits
    the mask, and a signal sent to the process reaches a thread that does not block it."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, SUPERVISED)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def listening_sockets(host: str, port: int, count: int) -> list[socket.socket]:
    """`count` TCP sockets listening on (host, port), one per worker (port 0: one free port
    for all); ValueError when the port is taken. With SO_REUSEPORT (Linux) each is its own
    socket and the kernel spreads new connections over them: on one shared socket the first
    worker to wake accepts every pending connection, so a few keep-alive clients all land on
    one worker while the others idle (docs/benchmarks.md, "Serving"). Without SO_REUSEPORT,
    one shared socket `count` times."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    share = hasattr(socket, "SO_REUSEPORT")
    sockets: list[socket.socket] = []
    try:
        if share:
            # SO_REUSEPORT would also join another server's sockets on the port (a second
            # `starsrec serve` started by mistake): a plain bind first says whether it is free.
            with socket.socket(family, socket.SOCK_STREAM) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                probe.bind((host, port))
                port = probe.getsockname()[1]  # port 0: the free port every socket joins
        for _ in range(count if share else 1):
            sock = socket.socket(family, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if share:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((host, port))
            sock.listen(2048)
            sock.set_inheritable(True)
    except OSError as error:
        for sock in sockets:
            sock.close()
        raise ValueError(f"cannot listen on {host}:{port} ({error.strerror})") from error
    return sockets if share else sockets * count


def notify_parent() -> None:
    """Tell the supervisor this worker reloaded, so it reloads the others."""
    os.kill(os.getppid(), signal.SIGUSR1)


def serve_workers(
    run_worker: Callable[[int, socket.socket], None], sockets: list[socket.socket]
) -> int:
    """Fork one worker per listening socket (`listening_sockets`), worker n running
    `run_worker(n, sockets[n])` until it returns with the other sockets closed, then
    supervise them (see the module doc); returns the parent's exit status. The parent
    closes every socket once the workers hold them: a socket nobody accepts on would keep
    the connections the kernel gives it waiting. Call it inside `held_signals`."""
    count = len(sockets)
    parent = os.getpid()
    workers: dict[int, int] = {}  # pid -> worker number
    for number in range(count):
        pid = os.fork()
        if pid == 0:  # the worker
            status = 1
            try:
                # A reload asked for before the app listens for SIGHUP must not kill it.
                signal.signal(signal.SIGHUP, signal.SIG_IGN)
                signal.pthread_sigmask(signal.SIG_UNBLOCK, SUPERVISED)
                _die_with(parent)
                own = sockets[number]
                for sock in sockets:
                    if sock is not own:
                        sock.close()
                run_worker(number, own)
                status = 0
            except BaseException:
                logger.exception("worker %d failed", number)
            finally:
                os._exit(status)
        workers[pid] = number
    for sock in sockets:
        sock.close()
    logger.info("serving with %d workers (pids %s)", count, ", ".join(map(str, workers)))
    return _supervise(workers)


def _die_with(parent: int) -> None:
    """Have the kernel kill this process when the parent dies (Linux; elsewhere a no-op)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)


def _supervise(workers: dict[int, int]) -> int:
    status, stopping = 0, False
    while workers:
        info = signal.sigwaitinfo(SUPERVISED)
        if info.si_signo == signal.SIGCHLD:
            for pid, code in _exited(workers):
                number = workers.pop(pid)
                if not stopping:
                    logger.error(
                        "worker %d (pid %d) exited with status %d: stopping the others",
                        number,
                        pid,
                        code,
                    )
                    status, stopping = 1, True
                    _signal(workers, signal.SIGTERM)
        elif info.si_signo in (signal.SIGTERM, signal.SIGINT):
            stopping = True
            _signal(workers, signal.SIGTERM)
        elif info.si_signo == signal.SIGHUP:
            _signal(workers, signal.SIGHUP)
        elif info.si_signo == signal.SIGUSR1:  # one worker reloaded: the others follow
            _signal({pid: n for pid, n in workers.items() if pid != info.si_pid}, signal.SIGHUP)
    return status


def _exited(workers: dict[int, int]) -> list[tuple[int, int]]:
    """(pid, exit status) of every worker that has exited, reaped."""
    done = []
    while workers:
        try:
            pid, wait_status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid == 0:
            break
        if pid in workers:
            done.append((pid, os.waitstatus_to_exitcode(wait_status)))
    return done


def _signal(workers: dict[int, int], sig: int) -> None:
    for pid in workers:
        with contextlib.suppress(ProcessLookupError):  # exited; reaped at its SIGCHLD
            os.kill(pid, sig)
