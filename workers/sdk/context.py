"""What a service's function receives: the job, its input, progress, cancellation and outputs."""
from __future__ import annotations

import io
import logging
import mimetypes
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from service_gateway.errors import JobCancelled, JobError
from service_gateway.status import JobStatus
from service_gateway.storage import LocalStorage, check_name

log = logging.getLogger("workers.job")

#: How long a child process gets between SIGTERM and SIGKILL when a job is cancelled.
KILL_GRACE_S = 0.5


class ProgressReporter:
    """Throttled, monotonic progress: at most one write per ``interval_s``, never going back.

    Values are clamped to 0-99 while the job runs; 100 is reserved for SUCCESS.
    """

    def __init__(self, write: Callable[[int], None], interval_s: float, clock: Callable[[], float] = time.monotonic):
        self._write = write
        self._interval_s = interval_s
        self._clock = clock
        self._lock = threading.Lock()
        self.value = 0          # highest value reported by the service
        self.written = 0        # highest value written to the backend
        self._last_write = float("-inf")

    def update(self, percent: float) -> None:
        value = max(0, min(99, int(percent)))
        with self._lock:
            if value <= self.value:
                return
            self.value = value
            now = self._clock()
            if now - self._last_write < self._interval_s:
                return
            self._last_write = now
            self.written = value
        self._write(value)


class Cancellation:
    """The stop flag of one job, set by the watcher; kills registered child processes.

    The flag carries why the job stops: a cancel request (REVOKED, 109) or its time limit
    (FAILURE, 108); :meth:`JobContext.check_cancelled` raises that error.
    """

    def __init__(self) -> None:
        self._event = threading.Event()
        self._children: set[subprocess.Popen] = set()
        self._lock = threading.Lock()
        self.error: JobError = JobCancelled()

    @property
    def requested(self) -> bool:
        return self._event.is_set()

    def request(self, error: JobError | None = None) -> None:
        with self._lock:
            if not self._event.is_set() and error is not None:
                self.error = error
            self._event.set()
            children = list(self._children)
        for child in children:
            terminate(child)

    def register(self, child: subprocess.Popen) -> None:
        with self._lock:
            self._children.add(child)
        if self.requested:
            terminate(child)

    def unregister(self, child: subprocess.Popen) -> None:
        with self._lock:
            self._children.discard(child)


def terminate(child: subprocess.Popen) -> None:
    """SIGTERM a child, then SIGKILL it if it is still there after a short grace period."""
    if child.poll() is not None:
        return
    try:
        child.send_signal(signal.SIGTERM)
        child.wait(timeout=KILL_GRACE_S)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()
    except ProcessLookupError:
        pass


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Ask Linux to SIGKILL the child when the worker process dies, so no ffmpeg is orphaned."""
    try:
        import ctypes
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


@dataclass
class Output:
    name: str
    size: int
    content_type: str
    url: str

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "size": self.size, "content_type": self.content_type, "url": self.url}


@dataclass
class JobContext:
    """The job as a service function sees it.

    Attributes:
        id: the job uuid.
        service: the service name.
        doc_url: the document URL as submitted.
        params: validated parameters with defaults filled in.
        misc: free-form values given at submit.
        input_path: the fetched document (read-only; may be the original file for file:// URLs).
        tmp_dir: a private directory, removed when the job ends.
    """

    id: str
    service: str
    doc_url: str
    params: dict[str, Any]
    misc: dict[str, Any]
    tmp_dir: Path
    storage: LocalStorage
    reporter: ProgressReporter
    cancellation: Cancellation
    set_state: Callable[[JobStatus], None]
    input_path: Path | None = None
    media_info: dict[str, Any] | None = None
    outputs: list[Output] = field(default_factory=list)
    log: logging.LoggerAdapter = field(init=False)

    def __post_init__(self) -> None:
        self.log = logging.LoggerAdapter(log, {"job_id": self.id})

    # -- progress and cancellation ------------------------------------------------------------
    def progress(self, percent: float) -> None:
        """Report progress 0-100 (throttled, monotonic); also a cancellation point."""
        self.check_cancelled()
        self.reporter.update(percent)

    def check_cancelled(self) -> None:
        """Raise :class:`JobCancelled` if a cancel was requested (or the time-limit error)."""
        if self.cancellation.requested:
            raise self.cancellation.error

    def storing(self) -> None:
        """Say the job is storing its results (status STORING)."""
        self.check_cancelled()
        self.set_state(JobStatus.STORING)

    # -- child processes ----------------------------------------------------------------------
    def run(self, args: list[str], *, on_stdout_line: Callable[[str], None] | None = None,
            on_stderr_line: Callable[[str], None] | None = None,
            timeout_s: float | None = None) -> tuple[int, str]:
        """Run a program (argument list, never a shell string), killed if the job is cancelled.

        Args:
            args: program and arguments.
            on_stdout_line: called with each stdout line as it comes (e.g. ffmpeg -progress).
            on_stderr_line: called with each stderr line as it comes (e.g. a filter's log lines),
                from a reader thread.
            timeout_s: kill the program after this long (JobError 306).

        Returns:
            (exit code, the last 64 KiB of stderr).

        Raises:
            JobCancelled: the job was cancelled while the program ran.
        """
        def consume(stdout) -> None:
            with io.TextIOWrapper(stdout, errors="replace") as text:
                for line in text:
                    if on_stdout_line:
                        on_stdout_line(line.rstrip("\n"))
        return self._spawn(args, consume, on_stderr_line, timeout_s)

    def stream(self, args: list[str], chunk_bytes: int, on_chunk: Callable[[bytes], None], *,
               on_stderr_line: Callable[[str], None] | None = None,
               timeout_s: float | None = None) -> tuple[int, str]:
        """Run a program and hand its binary stdout to ``on_chunk`` in chunks of ``chunk_bytes``.

        This is how services read decoded media without holding it: e.g. ffmpeg writing raw
        frames (``chunk_bytes`` = one frame) or PCM audio (one analysis window) to ``pipe:1``.
        Memory stays one chunk whatever the input's length. A short last chunk is passed too.

        Returns and raises as :meth:`run`.
        """
        if chunk_bytes <= 0:
            raise ValueError("chunk_bytes must be > 0")

        def consume(stdout) -> None:
            while True:
                chunk = _read_exactly(stdout, chunk_bytes)
                if not chunk:
                    return
                on_chunk(chunk)
                self.check_cancelled()
        return self._spawn(args, consume, on_stderr_line, timeout_s)

    def _spawn(self, args: list[str], consume: Callable[[Any], None],
               on_stderr_line: Callable[[str], None] | None, timeout_s: float | None) -> tuple[int, str]:
        """Start ``args``, let ``consume`` read its stdout, and always reap it (see :meth:`run`)."""
        self.check_cancelled()
        child = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, preexec_fn=_die_with_parent, cwd=self.tmp_dir)
        self.cancellation.register(child)
        stderr_tail: list[str] = []
        reader = threading.Thread(target=_tail, args=(child.stderr, stderr_tail, on_stderr_line), daemon=True)
        reader.start()
        timed_out = threading.Event()

        def on_timeout() -> None:
            timed_out.set()
            terminate(child)
        timer = threading.Timer(timeout_s, on_timeout) if timeout_s else None
        if timer:
            timer.start()
        try:
            consume(child.stdout)
            code = child.wait()
        finally:
            if timer:
                timer.cancel()
            terminate(child)
            self.cancellation.unregister(child)
            reader.join(timeout=5)
            for pipe in (child.stdout, child.stderr):
                try:
                    pipe.close()
                except (OSError, ValueError):
                    pass
        self.check_cancelled()
        if timed_out.is_set():
            raise JobError(306, f"{Path(args[0]).name} took longer than {timeout_s:.0f} s")
        return code, "".join(stderr_tail)[-65536:]

    # -- outputs ------------------------------------------------------------------------------
    def output_path(self, name: str) -> Path:
        """A path in the private temp dir to write an output to, before :meth:`add_output`."""
        return self.tmp_dir / check_name(name)

    def add_output(self, name: str, path: Path | None = None, content_type: str | None = None) -> Output:
        """Store a file as a job output (atomically) and list it in the result's ``outputs``."""
        source = Path(path) if path else self.output_path(name)
        try:
            size = self.storage.put(self.id, check_name(name), source)
        except OSError as exc:
            raise JobError(302, f"could not store output {name}: {exc.strerror or exc}") from None
        entry = Output(name=name, size=size,
                       content_type=content_type or mimetypes.guess_type(name)[0] or "application/octet-stream",
                       url=f"/jobs/{self.id}/outputs/{name}")
        self.outputs = [o for o in self.outputs if o.name != name] + [entry]
        return entry


def _tail(stream, sink: list[str], on_line: Callable[[str], None] | None = None, keep: int = 200) -> None:
    if stream is None:
        return
    try:
        with io.TextIOWrapper(stream, errors="replace") as text:
            for line in text:
                if on_line is not None:
                    try:
                        on_line(line.rstrip("\n"))
                    except Exception:  # a parser bug must not stop the drain (the child would block)
                        log.exception("stderr line handler failed")
                        on_line = None
                sink.append(line)
                if len(sink) > keep:
                    del sink[: len(sink) - keep]
    except ValueError:  # the pipe was closed under us after the child was reaped
        pass


def _read_exactly(stream, size: int) -> bytes:
    """Read ``size`` bytes (fewer only at end of stream) from a binary pipe."""
    parts, missing = [], size
    while missing:
        data = stream.read(missing)
        if not data:
            break
        parts.append(data)
        missing -= len(data)
    return b"".join(parts)
