"""`starsrec serve --workers N`: N processes answering on one port, sharing what was loaded.

The parent loads the artifact once, listens on the port, freezes what it loaded out of the
collector and forks; each worker reads the model, the index and the item table from the
parent's pages: copy-on-write, shared for as long as nobody writes them. The parent accepts
every connection and hands it to the workers in turn over a Unix socket (SCM_RIGHTS, as
Node's cluster module does), so a few kept-alive clients spread evenly: on one shared
listening socket the first worker to wake accepts every pending connection, and with one
SO_REUSEPORT socket per worker the kernel's hash of the addresses put all four connections
of a benchmark client on one worker while the other idled (docs/benchmarks.md, "Serving").
A worker that cannot take a connection at once (gone, or its queue full) is passed over
for the next. Each worker opens its own event-store connection (a connection must not
cross a fork) and follows the product log and the store's forgets (`starsrec.web.app`), so
a product put or a user forgotten through one worker reaches all.

The parent only accepts and supervises:
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
import threading
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


def listening_socket(host: str, port: int) -> socket.socket:
    """A TCP socket listening on (host, port) (port 0: a free port); ValueError when the
    port is taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as error:
        sock.close()
        raise ValueError(f"cannot listen on {host}:{port} ({error.strerror})") from error
    return sock


def handed_connections(channel: socket.socket) -> list[socket.socket]:
    """The connections the parent has handed to this worker on its non-blocking `channel`
    and not yet taken ([] when none waits); EOFError once the parent has closed it."""
    taken: list[socket.socket] = []
    while True:
        try:
            data, fds, _, _ = socket.recv_fds(channel, 64, 64)
        except BlockingIOError:
            return taken
        if not data and not fds:
            for sock in taken:
                sock.close()
            raise EOFError("the parent closed the hand-over channel")
        taken += [socket.socket(fileno=fd) for fd in fds]


def _hand_out(listener: socket.socket, channels: list[socket.socket]) -> None:
    """Accept on `listener` until it is shut down, handing each connection to the next
    worker's channel in turn; a worker that cannot take it at once is passed over, and a
    connection no worker can take is closed."""
    turn = 0
    while True:
        try:
            conn, _ = listener.accept()
        except OSError:  # shut down: the server is stopping
            return
        with conn:
            for _ in range(len(channels)):
                channel, turn = channels[turn], (turn + 1) % len(channels)
                try:
                    socket.send_fds(channel, [b"c"], [conn.fileno()])
                    break
                except OSError:  # gone (its parent end closed) or its queue full
                    continue


def notify_parent() -> None:
    """Tell the supervisor this worker reloaded, so it reloads the others."""
    os.kill(os.getppid(), signal.SIGUSR1)


def serve_workers(
    run_worker: Callable[[int, socket.socket], None], listener: socket.socket, count: int
) -> int:
    """Fork `count` workers, worker n running `run_worker(n, channel)` until it returns,
    where `channel` is the Unix socket the parent hands it connections on
    (`handed_connections`); then accept on `listener` and hand out (in a thread) while
    supervising the workers (see the module doc); returns the parent's exit status. Call
    it inside `held_signals`."""
    parent = os.getpid()
    # One message per connection handed over: a datagram per send, never merged.
    pairs = [socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET) for _ in range(count)]
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
                listener.close()
                for n, (ours, theirs) in enumerate(pairs):
                    ours.close()
                    if n != number:
                        theirs.close()
                theirs = pairs[number][1]
                theirs.setblocking(False)
                run_worker(number, theirs)
                status = 0
            except BaseException:
                logger.exception("worker %d failed", number)
            finally:
                os._exit(status)
        workers[pid] = number
    channels = []
    for ours, theirs in pairs:
        theirs.close()
        ours.setblocking(False)  # a worker that cannot take a connection at once is passed over
        channels.append(ours)
    logger.info("serving with %d workers (pids %s)", count, ", ".join(map(str, workers)))
    dispatcher = threading.Thread(target=_hand_out, args=(listener, channels), daemon=True)
    dispatcher.start()
    try:
        return _supervise(workers)
    finally:
        with contextlib.suppress(OSError):
            listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept
        dispatcher.join(timeout=5)
        listener.close()
        for channel in channels:
            channel.close()


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
