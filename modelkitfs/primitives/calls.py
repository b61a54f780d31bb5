"""Calls that may never return, made with a deadline: the caller never waits on them unbounded.

Any call on a FUSE folder (a ``stat``, a ``getxattr``, a bind mount, resolving a path through
it) waits in the kernel for that folder's daemon, and a stopped daemon (SIGSTOP, a debugger, a
profiler, a machine out of memory) answers never: the CSI plugin's gRPC workers all waited so,
and ``modelkitfs mounts`` hung on one stopped mount among many. Here each call runs in a daemon
thread of its own, waited for at most so long; a call that outlives its deadline is abandoned to
finish (or not) on its own, and told so (:meth:`Call.keep`), so that what it did after its
caller gave up is undone rather than left behind. Abandoned calls are bounded in number
(:data:`MAX_ABANDONED`): beyond that, new calls are refused at once. Calls with the same ``key``
share one thread: while one is known not to answer, the next fails at once rather than adding a
thread to the pile. Several calls can be started at once and waited for against one deadline
(:meth:`Calls.start`, :meth:`Calls.wait`): one that never answers costs the others nothing.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

from modelkitfs.errors import ModelKitFSError

log = logging.getLogger(__name__)

T = TypeVar("T")

MAX_ABANDONED = 16


class NoAnswer(ModelKitFSError):
    """A call did not return within its deadline (it may still, later)."""


class Call(Generic[T]):
    """One call in its thread: its outcome, and whether its caller still waits for it."""

    def __init__(self, what: str, lock: threading.Lock) -> None:
        self.what = what
        self.done = threading.Event()  # set once the function has returned
        self.kept = False  # its result is the caller's: too late to give up
        self.abandoned = False  # its caller gave up
        self.result: T | None = None
        self.error: BaseException | None = None
        self._lock = lock

    def keep(self) -> bool:
        """Commit: whether the caller will hear of this call's result (then it waits for the
        function's return, so keep it for the end). False: the caller gave up, and the call
        should undo what it did."""
        with self._lock:
            self.kept = not self.abandoned
            return self.kept


class Calls:
    """Runs blocking calls in threads with deadlines; counts those abandoned and running."""

    def __init__(self, max_abandoned: int = MAX_ABANDONED) -> None:
        self.max_abandoned = max_abandoned
        self._lock = threading.Lock()
        self._abandoned = 0
        self._by_key: dict[str, Call[object]] = {}

    def run(
        self,
        seconds: float,
        what: str,
        function: Callable[[Call[T]], T],
        key: str | None = None,
    ) -> T:
        """``function(call)``'s result or error if it returns within ``seconds``, else
        :class:`NoAnswer`. ``function`` may ask ``call.keep()`` last, before it commits to what
        it did: False means nobody will hear of it."""
        return self._wait(self.start(what, function, key), seconds, what)

    def start(self, what: str, function: Callable[[Call[T]], T], key: str | None = None) -> Call[T]:
        """``function(call)`` started in a thread of its own (or the call already running
        under ``key``), for :meth:`wait`; :class:`NoAnswer` at once when ``key`` is known not
        to answer or too many calls have been abandoned."""
        with self._lock:
            call = self._by_key.get(key) if key is not None else None
            if call is not None and call.abandoned:
                raise NoAnswer(f"{what}: still no answer")
            if call is None:
                if self._abandoned >= self.max_abandoned:
                    raise NoAnswer(f"{what}: {self._abandoned} earlier calls have not returned")
                call = Call(what, self._lock)
                if key is not None:
                    self._by_key[key] = call
                threading.Thread(
                    target=self._body, args=(call, function, key), name="call", daemon=True
                ).start()
        return call  # type: ignore[return-value]

    def wait(self, call: Call[T], seconds: float) -> T:
        """The started ``call``'s result or error if it returns within ``seconds``, else
        :class:`NoAnswer` (and the call is abandoned)."""
        return self._wait(call, seconds, call.what)

    def _wait(self, call: Call[T], seconds: float, what: str) -> T:
        if not call.done.wait(seconds):
            with self._lock:
                finishing = call.kept or call.done.is_set()
                if not finishing and not call.abandoned:
                    call.abandoned = True
                    self._abandoned += 1
            if finishing:
                call.done.wait()  # committed: its result comes right after
        if call.abandoned:
            raise NoAnswer(f"{what}: no answer within {seconds:g} s")
        if call.error is not None:
            raise call.error
        return call.result  # type: ignore[return-value]

    def _body(self, call: Call[T], function: Callable[[Call[T]], T], key: str | None) -> None:
        try:
            call.result = function(call)
        except BaseException as exc:  # the caller's to hear, if it still waits
            call.error = exc
        with self._lock:
            if key is not None and self._by_key.get(key) is call:
                del self._by_key[key]
            if call.abandoned:
                self._abandoned -= 1
        call.done.set()
        if call.abandoned and call.error is not None:  # nobody is left to hear of it
            log.warning("%s failed after its caller gave up: %s", call.what, call.error)
