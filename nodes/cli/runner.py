"""Spreading ComfyUI prompts over several servers (HTTP API, standard library only).

Each server gets its own worker thread, which keeps that server's queue short and full (``depth``
prompts queued at once), polls ``/history`` for what finished, fetches the images with ``/view`` and
hands them to ``on_done``. A server that stops answering is dropped: the prompts it held go back to
the shared queue for the others, so nothing is lost; a job counts as done once, whichever server
finishes it first (``on_done`` is called exactly once per job)."""

from __future__ import annotations

import collections
import json
import logging
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("scapre")


class ServerDown(ConnectionError):
    """The server did not answer (refused, reset, timed out)."""


class PromptRejected(ValueError):
    """The server answered but refused the prompt (validation errors); it would refuse it anywhere."""


@dataclass(frozen=True)
class Job:
    """One prompt to run: ``key`` names it in results; ``outputs`` maps an image name to the id of the
    SaveImage node that produces it."""

    key: str
    prompt: Mapping[str, Any]
    outputs: Mapping[str, str]
    meta: Mapping[str, Any] = field(default_factory=dict)


class Server:
    """A ComfyUI server's HTTP API (the calls the runner needs)."""

    def __init__(self, url: str, timeout: float = 30.0) -> None:
        parsed = urllib.parse.urlparse(url if "://" in url else f"http://{url}")
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ValueError(f"not a server URL: {url!r} (expected e.g. http://127.0.0.1:8188)")
        self.url = f"{parsed.scheme}://{parsed.netloc}{parsed.path.rstrip('/')}"
        self.timeout = timeout
        self.client_id = uuid.uuid4().hex

    def __repr__(self) -> str:
        return f"Server({self.url})"

    def _open(self, route: str, body: Any = None, timeout: float | None = None) -> bytes:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + route, data=data,
                                         headers={"Content-Type": "application/json"} if data else {})
        try:
            with urllib.request.urlopen(request, timeout=timeout or self.timeout) as response:
                return response.read()
        except urllib.error.HTTPError as err:
            detail = err.read().decode("utf-8", "replace")
            if err.code == 400 and route == "/prompt":
                raise PromptRejected(_rejection(detail)) from None
            if err.code >= 500:
                raise ServerDown(f"{self.url}{route}: HTTP {err.code}") from None
            raise RuntimeError(f"{self.url}{route}: HTTP {err.code}: {detail[:300]}") from None
        except (urllib.error.URLError, OSError, TimeoutError) as err:  # refused, reset, timed out
            raise ServerDown(f"{self.url}: {getattr(err, 'reason', err)}") from None

    def get_json(self, route: str) -> Any:
        return json.loads(self._open(route))

    def object_info(self, node_class: str) -> dict[str, Any]:
        return self.get_json(f"/object_info/{urllib.parse.quote(node_class)}").get(node_class, {})

    def queue(self, prompt: Mapping[str, Any]) -> str:
        answer = json.loads(self._open("/prompt", {"prompt": prompt, "client_id": self.client_id}))
        if answer.get("node_errors"):
            raise PromptRejected(_rejection(json.dumps(answer)))
        return answer["prompt_id"]

    def history(self, prompt_id: str) -> dict[str, Any] | None:
        """The history entry of a finished prompt (ComfyUI files it when the prompt ends), else None."""
        return self.get_json(f"/history/{prompt_id}").get(prompt_id) or None

    def view(self, image: Mapping[str, str]) -> bytes:
        query = urllib.parse.urlencode({"filename": image["filename"], "subfolder": image.get("subfolder", ""),
                                        "type": image.get("type", "output")})
        return self._open(f"/view?{query}", timeout=max(self.timeout, 120))

    def forget(self, prompt_ids: Iterable[str]) -> None:
        """Take still-queued prompts of ours off the server's queue (best effort)."""
        ids = list(prompt_ids)
        if ids:
            try:
                self._open("/queue", {"delete": ids})
            except (ServerDown, RuntimeError):
                pass


def _rejection(detail: str) -> str:
    try:
        data = json.loads(detail)
    except ValueError:
        return detail[:500]
    error = data.get("error") or {}
    parts = [str(error.get("message", "")), str(error.get("details", ""))]
    for node, info in (data.get("node_errors") or {}).items():
        for e in info.get("errors", []):
            parts.append(f"node {node} ({info.get('class_type')}): {e.get('message')}: {e.get('details')}")
    return "; ".join(p for p in parts if p) or detail[:500]


def _finished_status(entry: Mapping[str, Any]) -> tuple[bool, str]:
    """(succeeded, message) of a finished history entry."""
    status = entry.get("status") or {}
    if status.get("status_str") == "success" or (not status and entry.get("outputs")):
        return True, ""
    for kind, data in status.get("messages", []):
        if kind == "execution_error":
            return False, f"{data.get('node_type')}: {data.get('exception_message', '').strip()}"
        if kind == "execution_interrupted":
            return False, "interrupted on the server"
    return False, f"status {status.get('status_str')!r}"


class Runner:
    """Runs jobs over ``servers``; see the module docstring.

    ``on_done(job, images, server_url)`` gets ``{output name: [png bytes, ...]}``; ``on_failed(job,
    message)`` a job the server ran and failed, or refused. Both are called from worker threads, one
    at a time. ``retries`` failed requests in a row (``retry_wait`` s apart) make a server count as
    gone; so does a job running longer than ``stuck_after`` seconds."""

    def __init__(self, servers: list[Server], on_done: Callable[[Job, dict[str, list[bytes]], str], None],
                 on_failed: Callable[[Job, str], None], *, depth: int = 2, poll: float = 0.2, retries: int = 3,
                 retry_wait: float = 1.0, stuck_after: float = 1800.0) -> None:
        if not servers:
            raise ValueError("no servers")
        self.servers = servers
        self.on_done, self.on_failed = on_done, on_failed
        self.depth, self.poll, self.retries, self.retry_wait, self.stuck_after = (
            max(1, depth), poll, max(1, retries), retry_wait, stuck_after)
        self._lock = threading.Condition()
        self._pending: collections.deque[Job] = collections.deque()
        self._finished: set[str] = set()
        self._total = 0
        self._stop = False
        self._error: str | None = None
        self.gone: dict[str, str] = {}
        self.done_by: collections.Counter[str] = collections.Counter()

    # -- shared state -------------------------------------------------------------------------------------

    def _take(self, n: int) -> list[Job]:
        with self._lock:
            return [self._pending.popleft() for _ in range(min(n, len(self._pending)))]

    def _give_back(self, jobs: Iterable[Job]) -> None:
        with self._lock:
            for job in reversed(list(jobs)):
                if job.key not in self._finished:
                    self._pending.appendleft(job)
            self._lock.notify_all()

    def _finish(self, job: Job, server: Server, call: Callable[[], None]) -> None:
        with self._lock:
            if job.key in self._finished:  # another server finished it first (after a hand-over)
                return
            call()
            self._finished.add(job.key)
            self.done_by[server.url] += 1
            self._lock.notify_all()

    def _all_done(self) -> bool:
        return len(self._finished) >= self._total

    # -- running ------------------------------------------------------------------------------------------

    def run(self, jobs: Iterable[Job]) -> None:
        """Run every job; returns when all finished. Raises RuntimeError when every server is gone
        (the jobs not done are left for a rerun), and passes KeyboardInterrupt on after telling the
        servers to drop what they still had queued for us."""
        jobs = list(jobs)
        keys = [j.key for j in jobs]
        if len(set(keys)) != len(keys):
            raise ValueError("job keys must be unique")
        self._pending.extend(jobs)
        self._total = len(jobs)
        if not jobs:
            return
        threads = [threading.Thread(target=self._work, args=(s,), name=f"scapre-{s.url}", daemon=True)
                   for s in self.servers]
        for t in threads:
            t.start()
        try:
            with self._lock:
                while not self._all_done() and len(self.gone) < len(self.servers) and not self._stop:
                    self._lock.wait(0.5)
        except BaseException:
            with self._lock:
                self._stop = True
                self._lock.notify_all()
            for t in threads:
                t.join(timeout=10)
            raise
        for t in threads:
            t.join()
        if self._error is not None:
            raise RuntimeError(self._error)
        if not self._all_done():
            left = self._total - len(self._finished)
            raise RuntimeError(f"every server is gone ({'; '.join(f'{u}: {m}' for u, m in self.gone.items())}); "
                               f"{left} job(s) not done: rerun the same command to resume")

    def _work(self, server: Server) -> None:
        inflight: dict[str, tuple[Job, float]] = {}
        failures = 0
        try:
            while True:
                with self._lock:
                    if self._stop:
                        server.forget(inflight)
                        return
                    if self._all_done():
                        return
                    if not inflight and not self._pending:
                        self._lock.wait(self.poll)  # others still run jobs that may come back to us
                        continue
                try:
                    for job in self._take(self.depth - len(inflight)):
                        try:
                            inflight[server.queue(job.prompt)] = (job, time.monotonic())
                        except PromptRejected as err:
                            self._finish(job, server, lambda job=job, err=err: self.on_failed(job, str(err)))
                        except ServerDown:
                            self._give_back([job])
                            raise
                    for prompt_id, (job, since) in list(inflight.items()):
                        entry = server.history(prompt_id)
                        if entry is None:
                            if time.monotonic() - since > self.stuck_after:
                                raise ServerDown(f"{server.url}: job {job.key} stuck for {self.stuck_after:.0f} s")
                            continue
                        ok, message = _finished_status(entry)
                        images = self._images(server, job, entry) if ok else None
                        if images is not None:
                            self._finish(job, server, lambda job=job, images=images:
                                         self.on_done(job, images, server.url))
                        else:
                            message = message or f"finished without the images of nodes {dict(job.outputs)}"
                            self._finish(job, server, lambda job=job, message=message: self.on_failed(job, message))
                        del inflight[prompt_id]
                    failures = 0
                except ServerDown as err:
                    failures += 1
                    if failures >= self.retries or "stuck" in str(err):
                        raise
                    log.warning("%s did not answer (%s); retrying", server.url, err)
                    time.sleep(self.retry_wait)
                    continue
                time.sleep(self.poll)
        except ServerDown as err:
            log.warning("server %s is gone (%s); its %d job(s) go to the others", server.url, err, len(inflight))
            with self._lock:
                self.gone[server.url] = str(err)
            self._give_back(job for job, _ in inflight.values())
        except BaseException as err:  # a bug or a failing callback: stop everything rather than hang
            log.error("worker for %s failed: %r", server.url, err)
            with self._lock:
                self.gone[server.url] = repr(err)
                self._error = f"{server.url}: {err}"
                self._stop = True
                self._lock.notify_all()
            self._give_back(job for job, _ in inflight.values())

    def _images(self, server: Server, job: Job, entry: Mapping[str, Any]) -> dict[str, list[bytes]] | None:
        """``{output name: [png bytes]}`` of a finished job, or None when an output has no image."""
        outputs = entry.get("outputs") or {}
        images = {}
        for name, node_id in job.outputs.items():
            listed = (outputs.get(node_id) or {}).get("images") or []
            if not listed:
                return None
            images[name] = [server.view(image) for image in listed]
        return images
