"""Everything one running service holds: settings, keys, model, audit store, metrics, pages.

Built by the app factory, started and stopped by its lifespan handler (never at import).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any

from pydantic import RootModel

from serving import scoring
from serving.api.keys import Caller, KeyStore, ensure_development_keys
from serving.api.pages import Pages
from serving.api.prometheus import Metrics
from serving.audit.anchors import CheckpointLog
from serving.audit.signing import ensure_signing_key
from serving.audit.store import AuditStore
from serving.exceptions import AuditUnavailable, ModelLoadFailed
from serving.online import OnlineFeatures
from serving.schemas import ScoreRequestBase, request_models
from serving.scoring import Decision
from serving.served import Loader, ModelHolder, ServedModel, Watcher
from serving.settings import Settings
from training.bundle import load_model
from training.treeshap import PARALLEL_TURN

log = logging.getLogger("scf_risk.serving")


def bootstrap_keys(settings: Settings) -> None:
    """Create the development keys file on first run and print its path and keys, once."""
    created = ensure_development_keys(settings.api_keys, development=settings.is_development)
    if created:
        lines = [f"scf-risk: created development API keys in {settings.api_keys.resolve()}"]
        lines += [f"  {role:8s} {key}" for role, key in created.items()]
        lines.append("  (shown once; only their hashes are stored)")
        print("\n".join(lines), file=sys.stdout, flush=True)


def bootstrap_signing(settings: Settings, store: AuditStore) -> None:
    """Give the store its signing key and checkpoint file (fail loudly if the key is unusable;
    in development create it on first run and say where)."""
    signer, created = ensure_signing_key(
        settings.signing_key_path, settings.public_keys_path, development=settings.is_development
    )
    if created:
        print(
            f"scf-risk: created the audit signing key {settings.signing_key_path.resolve()} "
            f"(key id {signer.key_id}, mode 0600); its public key is in "
            f"{settings.public_keys_path.resolve()}. Keep the private key out of the audit "
            "database's backups.",
            file=sys.stdout,
            flush=True,
        )
    store.signer = signer
    store.checkpoints = CheckpointLog(
        settings.checkpoints_path,
        signer,
        store=store.chain_name,
        every_records=settings.checkpoint_every_records,
        every_seconds=settings.checkpoint_every_seconds,
    )


Group = tuple[Sequence[Decision], Caller]

GC_THRESHOLDS = (10_000, 10, 10)
"""The cyclic garbage collector's thresholds in a serving process (Python's: 700, 10, 10): a
scored batch allocates tens of thousands of short-lived objects, which at 700 start a young
collection every few dozen decisions."""


def settle_heap() -> None:
    """Collect, then move every object alive now (the imported libraries, the loaded model) out
    of the collector's sight (`gc.freeze`): a full collection then walks only what serving
    allocated since, not the whole heap. Measured on the bench's model: a full collection took
    about 0.45 s of CPU, frozen about 0.035 s; one fell every two or three batches of 1,000 SMEs.
    Objects frozen are still freed by reference counting; cycles among them only by a
    collection that sees them: so the heap is unfrozen first, and the model a reload replaced
    (its request classes are cycles) is collected here, not kept for good."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()


Take = Callable[[], list[Group]]
"""What a commit calls once it holds the write turn: the groups queued until then
(`LoopCommits`)."""


class LoopCommits:
    """Decisions recorded from the event loop, committed in groups on one thread of their own.

    A request queues its decisions and waits on a future; while no commit is under way, a
    request wakes the commit thread, and the queue is taken when that commit holds the
    database's write turn (`AuditStore.append_gathered`): whatever queued while it waited for
    the turn (another worker process committing, a batch's append) is in the same
    transaction, one fsync for all of them. What queues after is the next group: once the loop
    has handed the group's requests their answers (one `call_soon_threadsafe` per group), it
    runs the thread again if anything queued meanwhile, so the groups are as large as when each
    commit was an executor job the loop awaited (a thread going straight on to the next group
    made groups of 2.7 requests instead of 6.8 at 8 in flight: more commits, more CPU). A
    future is resolved only when the transaction holding its records has committed (or failed:
    then every request of the group gets the error and none of its records is stored, as
    `AuditStore.append` promises). The loop never waits on the database. (An executor job per
    group, its future chained to the loop's, cost more CPU than the rest of the hand-off.)
    """

    def __init__(self, commit: Callable[[Take], list[list[dict[str, Any]]]]) -> None:
        self._commit = commit
        self._queue: list[tuple[Group, asyncio.Future[list[dict[str, Any]]]]] = []
        self._lock = threading.Lock()  # the queue and the state below
        self._wake = threading.Lock()  # held while the thread waits: released to run it once
        self._wake.acquire()
        # "idle": nothing queued; "running": the thread commits (or is about to); "pending":
        # the loop runs it next (`_next`: a first request queued, or a group's answers sent)
        self._state = "idle"
        self._closed = False
        self._thread: threading.Thread | None = None

    async def record(self, decisions: Sequence[Decision], caller: Caller) -> list[dict[str, Any]]:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[list[dict[str, Any]]] = loop.create_future()
        with self._lock:
            if self._closed:
                raise RuntimeError("the audit commits are closed: no decision is recorded")
            self._queue.append(((decisions, caller), done))
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="scf-risk-audit", daemon=True
                )
                self._thread.start()
            start = self._state == "idle"
            if start:
                self._state = "pending"
        if start:  # after what else the loop has ready: those requests join the group
            loop.call_soon(self._next)
        return await done

    def _run(self) -> None:
        """The commit thread: one group each time it is run, until closed with nothing left."""
        while True:
            self._wake.acquire()
            with self._lock:
                if not self._queue:
                    self._state = "idle"
                    if self._closed:
                        return
                    continue
            self._commit_group()

    def _commit_group(self) -> None:
        """One commit of what is queued when it holds the write turn; its requests answered."""
        group: list[tuple[Group, asyncio.Future[list[dict[str, Any]]]]] = []
        taken = False

        def take() -> list[Group]:
            nonlocal taken
            with self._lock:
                queued, self._queue = self._queue, []
            taken = True
            group.extend(queued)
            return [g for g, _ in queued]

        stored: list[list[dict[str, Any]]] | None = None
        error: BaseException | None = None
        try:
            stored = self._commit(take)
        except BaseException as exc:  # the group's error, handed to each of its requests
            if not taken:  # failed before it took the queue: the queue was its group
                take()
            error = exc
        if stored is not None and len(stored) != len(group):
            error = RuntimeError(f"{len(stored)} answers for {len(group)} requests")
            stored = None
        with self._lock:
            self._state = "pending"
        if not self._answer(group, stored, error):
            self._next()  # no loop will: the thread goes on by itself
        if error is not None and not isinstance(error, Exception):
            # its requests were cancelled (`_settle`); the thread lives on for the next groups
            # (raised, it would end the thread and leave every later request waiting)
            log.error("audit commit interrupted (%r): its requests were cancelled", error)

    def _answer(
        self,
        group: Sequence[tuple[Group, asyncio.Future[list[dict[str, Any]]]]],
        stored: list[list[dict[str, Any]]] | None,
        error: BaseException | None,
    ) -> bool:
        """Hand each request of the group its payloads (or the error) on its loop, one call
        per loop; the last of them runs the thread again (`_next`). False when no loop is
        left to do so (one has closed, or the group was empty)."""
        by_loop: dict[asyncio.AbstractEventLoop, list[int]] = {}
        for k, (_, done) in enumerate(group):
            by_loop.setdefault(done.get_loop(), []).append(k)
        scheduled = 0
        for n, (loop, ks) in enumerate(by_loop.items()):
            futures = [group[k][1] for k in ks]
            results = None if stored is None else [stored[k] for k in ks]
            try:
                loop.call_soon_threadsafe(
                    self._settle, futures, results, error, n == len(by_loop) - 1
                )
            except RuntimeError:  # the loop is closed: nobody is left to answer
                continue
            scheduled += 1
        return 0 < scheduled == len(by_loop)

    def _settle(
        self,
        futures: Sequence[asyncio.Future[list[dict[str, Any]]]],
        results: Sequence[list[dict[str, Any]]] | None,
        error: BaseException | None,
        last: bool,
    ) -> None:
        """On the loop: resolve each request's future (one whose client left is skipped: its
        decisions are stored all the same); after the group's last answers, the next group
        once the requests answered have had their turn (`call_soon`), as when the loop awaited
        an executor job per commit."""
        try:
            for k, done in enumerate(futures):
                if done.done():
                    continue
                if results is not None:
                    done.set_result(results[k])
                elif isinstance(error, Exception):
                    done.set_exception(error)
                else:
                    done.cancel()
        finally:
            if last:
                asyncio.get_running_loop().call_soon(self._next)

    def _next(self) -> None:
        """Run the thread when anything is queued (or the commits are closing), else it is
        idle: on the loop after a first request queued or a group was answered, or on the
        thread when no loop is left to."""
        with self._lock:
            if self._state != "pending":
                return  # `close` ran it already
            wake = bool(self._queue) or self._closed
            self._state = "running" if wake else "idle"
        if wake:
            self._wake.release()

    def close(self) -> None:
        """Wait for the commits under way and queued (requests have stopped coming)."""
        with self._lock:
            self._closed = True
            thread = self._thread
            wake = self._state in ("idle", "pending")  # a `_next` the loop may never run
            if wake:
                self._state = "running"
        if thread is None:
            return
        if wake:
            self._wake.release()
        thread.join()


class Service:
    """The state of one app: what the routes use."""

    def __init__(
        self,
        settings: Settings,
        *,
        loader: Loader | None = None,
        store: AuditStore | None = None,
        tune_gc: bool = False,
    ) -> None:
        self.settings = settings
        self.tune_gc = tune_gc
        self.store = store if store is not None else AuditStore(settings.audit_db)
        self.online = OnlineFeatures(self.store)
        self.metrics = Metrics()
        self.pages = Pages()
        self.holder = ModelHolder(
            loader or load_model,
            model_uri=settings.model_uri,
            tracking_uri=settings.mlflow_tracking_uri,
            explain_method=settings.explain_method,
            threads=settings.batch_threads,
        )
        self.keys: KeyStore
        self.parallel = PARALLEL_TURN
        """Held by the batch whose compiled kernels run over numba's threads
        (`decide_batch`), and by every parallel kernel launch in the process (a model loading
        on a reload warms its kernels under it): `training.treeshap.PARALLEL_TURN`."""
        self._watcher: Watcher | None = None
        self._commits: LoopCommits | None = None
        self._empty_models: tuple[type[ScoreRequestBase], type[RootModel[Any]]] | None = None
        self._limits: tuple[tuple[float, int], scoring.Limits] | None = None

    @property
    def limits(self) -> scoring.Limits:
        """The settings' refusal thresholds (`Settings.limits`), built again only when the
        settings' values change (not on every request)."""
        key = (self.settings.min_coverage, self.settings.max_feature_age_days)
        if self._limits is None or self._limits[0] != key:
            self._limits = (key, self.settings.limits)
        return self._limits[1]

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> None:
        """Keys (fail loudly if unusable), audit store, model (log why not, stay up), watcher."""
        bootstrap_keys(self.settings)
        self.keys = KeyStore(
            self.settings.api_keys,
            development=self.settings.is_development,
            recheck_seconds=self.settings.keys_recheck_seconds,
        )
        if self.settings.audit_signing:
            bootstrap_signing(self.settings, self.store)
        else:
            log.warning(
                "audit signing is off (SCF_RISK_AUDIT_SIGNING=false): records are unsigned, "
                "no checkpoints are written, responses carry no receipt"
            )
        try:
            self.store.ensure_schema()
        except AuditUnavailable as exc:
            log.error("audit store not available at start (not ready): %s", exc)
        try:
            self.holder.adopt_generation(self.store)
        except AuditUnavailable as exc:
            log.error("cannot read the shared model state: %s", exc)
        loading = threading.Thread(target=self._initial_load, name="scf-risk-model-load")
        loading.daemon = True
        loading.start()
        loading.join(self.settings.model_load_wait_seconds)
        if loading.is_alive():
            log.error(
                "model not loaded after %.0f s (registry slow or unreachable?): starting not "
                "ready, still loading %s in the background",
                self.settings.model_load_wait_seconds,
                self.settings.model_uri,
            )
        self._watcher = Watcher(self.follow, self.settings.reload_poll_seconds)
        self._watcher.start()
        self._commits = LoopCommits(self.record_gathered)
        if self.tune_gc:
            gc.set_threshold(*GC_THRESHOLDS)
            settle_heap()

    def _settled(self) -> None:
        """`settle_heap` after a model was loaded (when the service tunes the collector)."""
        if self.tune_gc:
            settle_heap()

    def _initial_load(self) -> None:
        try:
            served = self.holder.load()
            self.metrics.set_model(**_labels(served))
            self.record_model_change(None, served, by="start-up")
            self._settled()
        except ModelLoadFailed as exc:
            log.error(
                "model not loaded at start (not ready; retrying every %.0f s): %s",
                self.settings.reload_poll_seconds,
                exc,
            )

    def stop(self) -> None:
        if self._watcher is not None:
            self._watcher.stop()
        if self._commits is not None:
            self._commits.close()  # the commit under way ends first
            self._commits = None
        self.store.dispose()

    def follow(self) -> None:
        """One watcher poll: pick up a model another worker published, or retry a failed start."""
        if self.store.checkpoints is not None:
            try:
                self.store.checkpoints.poll()
            except AuditUnavailable as exc:
                log.error("checkpoint not written: %s", exc)
        before = self.holder.current
        self.holder.follow(self.store)
        after = self.holder.current
        if after is not None and after is not before:
            self.metrics.set_model(**_labels(after))
            self.record_model_change(before, after, by="reload signalled by another worker")
            self._settled()

    # -- operations -----------------------------------------------------------------------------
    def record(self, decisions: Sequence[Decision], caller: Caller) -> list[dict[str, Any]]:
        """Store decisions durably (before any response) and return the stored payloads."""
        return self.record_groups([(decisions, caller)])[0]

    def record_groups(
        self, groups: Sequence[tuple[Sequence[Decision], Caller]]
    ) -> list[list[dict[str, Any]]]:
        """`record` for several callers' decisions in one append: each group's stored
        payloads, in order; all stored or none. Through the store's group commit
        (`AuditStore.append`): concurrent callers (batch requests on the route's threads) share
        a transaction, with each other and with the event loop's commit (`record_gathered`)."""
        groups = list(groups)
        stored = self.store.append([d.body(caller) for ds, caller in groups for d in ds])
        return self._per_group(groups, stored)

    def record_gathered(self, take: Take) -> list[list[dict[str, Any]]]:
        """`record_groups` of the groups `take()` returns once the audit store holds its write
        turn (`AuditStore.append_gathered`): each group's stored payloads, in order."""
        groups: list[Group] = []

        def bodies() -> list[dict[str, Any]]:
            groups.extend(take())
            return [d.body(caller) for ds, caller in groups for d in ds]

        return self._per_group(groups, self.store.append_gathered(bodies))

    def _per_group(
        self, groups: Sequence[Group], stored: list[dict[str, Any]]
    ) -> list[list[dict[str, Any]]]:
        """The stored payloads of `groups`' decisions (in order), split by group; counted."""
        for payload in stored:
            self.metrics.count_decision(payload["grade"])
        out: list[list[dict[str, Any]]] = []
        at = 0
        for ds, _ in groups:
            out.append(stored[at : at + len(ds)])
            at += len(ds)
        return out

    async def record_async(
        self, decisions: Sequence[Decision], caller: Caller
    ) -> list[dict[str, Any]]:
        """`record` from the event loop (`LoopCommits`): durable before it returns."""
        if self._commits is None:
            raise RuntimeError("the service is not started: no audit commits")
        return await self._commits.record(decisions, caller)

    def decide_batch(self, served: ServedModel, inputs: Sequence[Any]) -> list[Decision]:
        """`scoring.decide` of a batch's prepared inputs, on `Settings.batch_threads`: a batch
        arriving while another one's kernels run on numba's threads runs on one thread (the
        same decisions, bit for bit) instead of waiting."""
        threads = self.settings.batch_threads
        if threads > 1 and self.parallel.acquire(blocking=False):
            try:
                return scoring.decide(served, inputs, threads=threads)
            finally:
                self.parallel.release()
        return scoring.decide(served, inputs)

    def record_model_change(
        self, before: ServedModel | None, after: ServedModel, *, by: str
    ) -> None:
        """Chain a model_change record, unless the chain's last one already names this model
        (several workers starting or following the same change)."""
        try:
            last = self.store.last_model_change()
            if last is not None and last.get("new_model") == after.info:
                return
            if before is None and last is not None:
                old: dict[str, Any] | None = last.get("new_model")
            else:
                old = before.info if before is not None else None
            self.store.record_model_change(old, after.info, by=by)
        except AuditUnavailable as exc:
            log.error("model change not recorded in the audit chain: %s", exc)

    def reload(self, *, by: str = "admin reload") -> ServedModel:
        """Load the configured model URI (the champion alias) and tell the other workers."""
        previous = self.holder.current
        try:
            served = self.holder.load()
        except ModelLoadFailed as exc:
            kept = previous.exact_uri if previous is not None else "no model"
            log.error("reload refused, still serving %s: %s", kept, exc)
            raise
        self.metrics.set_model(**_labels(served))
        self.record_model_change(previous, served, by=by)
        self._settled()
        try:
            self.holder.publish(self.store, served)
        except AuditUnavailable as exc:
            log.error("reloaded, but could not tell the other workers: %s", exc)
        return served

    def readiness(self) -> dict[str, Any]:
        served = self.holder.current
        writable = self.store.probe_shared(self.settings.ready_probe_reuse_seconds)
        return {
            "ready": served is not None and writable,
            "model": served.info if served is not None else None,
            "model_error": self.holder.last_error if served is None else None,
            "audit_store_writable": writable,
        }

    def descriptions(self) -> dict[str, str]:
        """Feature -> description from the served model's catalog (empty when none is loaded)."""
        served = self.holder.current
        return {f.name: f.description for f in served.model.catalog} if served else {}

    def grades(self) -> list[str]:
        served = self.holder.current
        return list(served.model.master_scale.grades) if served else []

    def request_models(self) -> tuple[type[ScoreRequestBase], type[RootModel[Any]]]:
        """The served model's request models (a catalog-less pair when nothing is loaded)."""
        served = self.holder.current
        if served is not None:
            return served.request_model, served.batch_model
        if self._empty_models is None:
            self._empty_models = request_models(())
        return self._empty_models


def _labels(served: ServedModel) -> dict[str, Any]:
    info = served.info
    return {"name": info["name"] or "", "version": info["version"], "run_id": info["run_id"]}
