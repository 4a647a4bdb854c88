"""Where a stage's command runs: this machine (a subprocess) or SLURM (submitit)."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from matsql.experiment.plan import Stage
from matsql.gpu import ENV as GPU_SHARE_ENV


class StageFailed(RuntimeError):
    pass


#: Called by an executor once a stage holds what it waited for (the local executor: its GPU
#: slots): the runner counts the stage's seconds from there, and may still refuse the stage by
#: raising (:class:`StageDeferred`: a lease's deadline has passed while it waited); the executor
#: then gives back what it held and runs nothing. The SLURM executor does not call it, so a SLURM
#: stage's seconds include its time in the queue, as before.
OnStart = Callable[[], None]


class StageDeferred(Exception):
    """A stage not started because the run's deadline passed (``experiment run --deadline``)."""


class Executor(Protocol):
    def run(self, stage: Stage, log: Path, on_start: OnStart | None = None) -> None: ...


def _argv(stage: Stage) -> list[str]:
    return [sys.executable, "-m", "matsql.cli", *stage.argv]


def visible_gpus() -> list[str]:
    """GPU ids this process may use: ``CUDA_VISIBLE_DEVICES`` if set, else all CUDA devices."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g for g in env.split(",") if g.strip()]
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())]
    except ImportError:
        return []


def shard_argv(argv: list[str], i: int, n: int, out: str) -> list[str]:
    """The argv of shard ``i`` of ``n``: ``--shard i/n`` and its own ``--out`` file."""
    res, skip = [], False
    for j, tok in enumerate(argv):
        if skip:
            skip = False
            continue
        if tok in ("--out", "-o") and j + 1 < len(argv):
            res += [tok, f"{out}.shard{i}"]
            skip = True
            continue
        res.append(tok)
    return [*res, "--shard", f"{i}/{n}"]


def merge_shards(out: str, n: int) -> None:
    """Merge the ``n`` shard files :func:`shard_argv` named into ``out`` (benchmark order), then
    remove them."""
    from matsql.rollout.io import merge_rollouts

    parts = [Path(f"{out}.shard{i}") for i in range(n)]
    merge_rollouts(parts, Path(out))
    for p in parts:
        p.unlink()


def needs_gpu(stage: Stage) -> bool:
    """False for a stage whose resources say ``gpus: 0`` (it runs on CPU only); a stage that says
    nothing may use a card, as before."""
    g = stage.resources.get("gpus")
    return g is None or int(g) > 0


#: Commands a warm worker runs (``experiment run --warm``): those that generate on a card and
#: train nothing. A training stage runs as its own process, as before: its memory is freed at its
#: end only when the process ends.
WARM_COMMANDS = (("rollout",), ("select",), ("diagnose",), ("train", "pick-checkpoint"))


def warm_command(stage: Stage) -> bool:
    """Whether the stage's command is one a warm worker may run (:data:`WARM_COMMANDS`)."""
    return any(tuple(stage.argv[: len(c)]) == c for c in WARM_COMMANDS)


OOM_MARKS = ("CUDA out of memory", "OutOfMemoryError")


def out_of_memory(log: Path, start: int = 0) -> bool:
    """Whether the stage log, from byte ``start`` (this attempt's part), shows a GPU allocation
    failure."""
    try:
        with log.open("rb") as f:
            f.seek(start)
            text = f.read().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return False
    return any(m in text for m in OOM_MARKS)


class LocalExecutor:
    """Runs each stage as ``python -m matsql.cli ...``; output is teed to the stage log.

    Stage resources: ``shards: N`` runs N rollout processes over disjoint questions, one per
    visible GPU, then merges their files; ``processes: N`` launches a training stage with
    ``accelerate launch`` on N GPUs (data parallel). Without GPUs both fall back to one process.

    ``gpu_slots`` > 1 lets that many processes share each GPU (rollout shards, concurrent stages
    under ``--jobs``): a 0.5B model's decoding is bound by kernel launches, not by the GPU, so
    two or three processes on one card finish more work per minute than one.
    ``gpus: 0`` marks a stage that needs no card (labels, compare, report, union-vote selection):
    it takes no slot and runs with no GPU visible, so under ``--jobs`` it runs beside the GPU
    stages instead of queueing for a slot (the lent GPU's minutes go to generation and training).
    ``slots: N`` gives a single-process stage N slots of one card (training: 2). Each process
    may allocate its slots' share of its card's memory (``matsql.gpu``: training caps itself,
    a vLLM engine sizes itself to it), so processes that share a card cannot run each other out
    of memory. A single-process stage that runs out of memory in its share runs once more with
    the whole card (it waits for the card), rather than failing the plan's branch.

    ``warm``: a generation stage (:data:`WARM_COMMANDS`; each shard of a sharded rollout) on one
    slot runs in a worker process kept per slot (:mod:`matsql.experiment.worker`), so its
    imports and its vLLM engine carry over to the next stage on that slot instead of being paid
    again. A worker holds its share of its card between stages, so an idle worker stands on one
    of the card's free slots: when a stage that runs as its own process (training) takes slots,
    idle workers there are stopped until they are no more than the free slots. A stage that fails
    in a worker runs once more as its own process (a failure the worker caused then costs one
    try, not the stage); after two stages passed that way, the run stops using workers.
    """

    #: stages that failed in a worker and passed as their own process before workers are given up
    WARM_STRIKES = 2

    def __init__(
        self,
        env: dict[str, str] | None = None,
        echo: bool = True,
        gpus: list[str] | None = None,
        gpu_slots: int = 1,
        warm: bool = False,
    ):
        import threading

        from matsql.experiment.worker import Worker

        if gpu_slots < 1:
            raise ValueError(f"gpu_slots must be >= 1, got {gpu_slots}")
        self.warm = warm
        self._worker_class = Worker
        self._idle: dict[
            str, list[Worker]
        ] = {}  # card -> workers waiting for a stage (no more than its free slots)
        self._strikes = 0
        self.env = {**os.environ, **(env or {})}
        self.echo = echo
        self.gpus = visible_gpus() if gpus is None else list(gpus)
        self.gpu_slots = gpu_slots  # processes per card
        self.slots = [g for _ in range(gpu_slots) for g in self.gpus]  # spread over cards first
        self._free = list(self.slots)
        self._cond = threading.Condition()
        self._rank: dict[str, int] = {}
        self._waiting: dict[int, tuple[int, int]] = {}  # ticket -> (rank, slots wanted)
        self._tickets = 0

    def set_priorities(self, rank: dict[str, int]) -> None:
        """Stage name -> rank (lower first) for handing out GPU slots (``run_plan`` sets it)."""
        self._rank = dict(rank)

    def _acquire(self, k: int, rank: int = 0, same_card: bool = False) -> list[str]:
        """Take ``k`` GPU slots, waiting while concurrent stages (``experiment run --jobs``) hold
        them. Waiters are served by rank: a stage takes free slots only if what is left still
        covers every better-ranked waiter, so a waiting rollout is not starved by side stages.
        ``same_card``: all ``k`` on one card (one process that needs a bigger share of it)."""
        k = min(k, self.gpu_slots if same_card else len(self.slots))
        with self._cond:
            self._tickets += 1
            ticket = self._tickets
            self._waiting[ticket] = (rank, k)

            def fits() -> bool:
                ahead = sum(w for t, (r, w) in self._waiting.items() if (r, t) < (rank, ticket))
                if same_card and max((self._free.count(g) for g in self._free), default=0) < k:
                    return False
                return len(self._free) - ahead >= k

            try:
                self._cond.wait_for(fits)
            finally:
                del self._waiting[ticket]
                self._cond.notify_all()
            taken = []
            for _ in range(k):  # the least busy card each time: a sharded stage spreads out
                g = taken[0] if same_card and taken else max(dict.fromkeys(self._free), key=self._free.count)
                self._free.remove(g)
                taken.append(g)
            return taken

    def _share(self, env: dict[str, str], slots_on_card: int) -> None:
        """Cap the process at its slots' share of the card's memory (``matsql.gpu``): processes
        sharing a card then cannot push each other out of memory; a training stage asks for
        more slots (``resources.slots``)."""
        frac = self.memory_fraction(slots_on_card)
        if frac is None:
            env.pop(GPU_SHARE_ENV, None)
        else:
            env[GPU_SHARE_ENV] = f"{frac:.4f}"

    def memory_fraction(self, slots_on_card: int) -> float | None:
        """The share of a card a process holding ``slots_on_card`` of its slots may allocate
        (``MATSQL_GPU_MEMORY_FRACTION``), or None when it may use the whole card."""
        return None if slots_on_card >= self.gpu_slots else slots_on_card / self.gpu_slots

    def _release(self, taken: list[str], workers: list | None = None) -> None:
        """Give back slots, and with them the workers that ran on them (idle now: under one
        lock, so that idle workers never outnumber a card's free slots)."""
        with self._cond:
            self._free.extend(taken)
            if self.warm:
                for w in workers or []:
                    self._idle.setdefault(w.card, []).append(w)
            self._cond.notify_all()
        if not self.warm:  # given up meanwhile (_strike)
            for w in workers or []:
                w.stop()

    def _spawn(self, argv: list[str], env: dict[str, str]) -> subprocess.Popen:
        return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)

    def _drain(self, procs: list[subprocess.Popen], f) -> list[int]:
        import threading

        lock = threading.Lock()

        def pump(k: int, p: subprocess.Popen) -> None:
            assert p.stdout is not None
            for line in p.stdout:
                tag = f"[{k}] " if len(procs) > 1 else ""
                with lock:
                    f.write(tag + line)
                    f.flush()
                    if self.echo:
                        sys.stderr.write(tag + line)

        threads = [threading.Thread(target=pump, args=(k, p)) for k, p in enumerate(procs)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return [p.wait() for p in procs]

    # --- warm workers -------------------------------------------------------------------------

    def _worker_env(self, card: str) -> dict[str, str]:
        env = dict(self.env)
        env["CUDA_VISIBLE_DEVICES"] = card
        self._share(env, 1)
        return env

    def _take_worker(self, card: str):
        """An idle worker on ``card``, or a new one (the caller holds a slot there, and idle
        workers stand on free slots only, so the card has room for it)."""
        with self._cond:
            idle = self._idle.setdefault(card, [])
            while idle:
                w = idle.pop()
                if w.alive():
                    return w
        return self._worker_class(card, self._worker_env(card))

    def _make_room(self, gpus: list[str]) -> None:
        """Before a stage runs as its own process on ``gpus`` (slots it holds): stop idle
        workers on those cards until they are no more than the free slots there, and wait for
        them, so that their memory is free before the process starts."""
        victims = []
        with self._cond:
            for card in dict.fromkeys(gpus):
                idle = self._idle.get(card, [])
                while len(idle) > self._free.count(card):
                    victims.append(idle.pop())
        for w in victims:
            w.stop()

    def _warm_fits(self, stage: Stage, gpus: list[str], single: bool, shards: int) -> bool:
        """A generation stage on one slot per process: a single process on one slot, or a
        sharded rollout (each shard on one slot)."""
        if not (self.warm and gpus and warm_command(stage)):
            return False
        return len(gpus) == 1 if single else shards > 1

    def _run_warm(self, stage: Stage, log: Path, gpus: list[str], shards: int) -> list | None:
        """The stage in workers, one per process it would have had. Passed: the workers, for
        :meth:`_release` to keep for the next stage. Failed: None, its workers stopped (their
        state is suspect, and the stage runs again on these slots as its own process)."""
        import threading

        n = min(shards, len(gpus)) if shards > 1 else 1
        argvs = [shard_argv(stage.argv, i, n, stage.out) for i in range(n)] if shards > 1 else [stage.argv]
        workers: list = []
        try:
            for i in range(n):
                workers.append(self._take_worker(gpus[i]))
        except BaseException:
            for w in workers:
                w.stop()
            raise
        lock = threading.Lock()
        rcs: list[int] = [-1] * n
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("a", encoding="utf-8") as f:
            f.write(f"$ {stage.command}\n")
            for i, (w, argv) in enumerate(zip(workers, argvs, strict=True)):
                what = f"shard {i}/{n}: " if n > 1 else ""
                f.write(
                    f"$ {what}warm worker pid {w.pid} (card {w.card}, its stage {w.stages + 1}): "
                    f"{shlex.join(argv)}\n"
                )
            f.flush()

            def go(i: int) -> None:
                tag = f"[{i}] " if n > 1 else ""

                def sink(line: str) -> None:
                    with lock:
                        f.write(tag + line)
                        f.flush()
                        if self.echo:
                            sys.stderr.write(tag + line)

                rcs[i] = workers[i].run(argvs[i], sink)

            threads = [threading.Thread(target=go, args=(i,)) for i in range(n)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            if any(rcs):
                for w in workers:
                    w.stop()
                f.write(
                    f"# the stage failed in warm worker(s) (exit codes {rcs}); again as its own "
                    "process (experiment run --warm)\n"
                )
                return None
        if n > 1:
            merge_shards(stage.out, n)
        return [w for w in workers if w.alive()]

    def close(self) -> None:
        """Stop every idle worker (``run_plan`` calls it when the plan ends)."""
        with self._cond:
            victims = [w for ws in self._idle.values() for w in ws]
            self._idle.clear()
        for w in victims:
            w.stop()

    def run(self, stage: Stage, log: Path, on_start: OnStart | None = None) -> None:
        shards = int(stage.resources.get("shards", 1))
        procs_n = int(stage.resources.get("processes", 1))
        slots = int(stage.resources.get("slots", 1) or 1)  # one process's share of a card
        single = shards <= 1 and procs_n <= 1
        wanted = slots if single else max(shards, procs_n, 1)
        if not needs_gpu(stage):
            if on_start:
                on_start()
            return self._run(stage, log, [], shards, procs_n, hide_gpus=True)
        rank = self._rank.get(stage.name, 0)
        gpus = self._acquire(wanted, rank, same_card=single) if self.gpus else []
        if on_start:
            try:
                on_start()
            except BaseException:
                self._release(gpus)
                raise
        warm_failed = False
        if self._warm_fits(stage, gpus, single, shards):
            try:
                kept = self._run_warm(stage, log, gpus, shards)
            except BaseException:
                self._release(gpus)
                raise
            if kept is not None:
                self._release(gpus, kept)
                return
            warm_failed = True
        while True:  # at most twice: the second try has the whole card, so no memory share
            start = log.stat().st_size if log.exists() else 0
            try:
                self._run(stage, log, gpus, shards, procs_n)
                if warm_failed:
                    self._strike(log)
                return
            except StageFailed:
                # a single process that ran out of memory in its share of a card gets one more
                # try with the whole card (session 12: SFT at half an H100 did; it fits alone)
                if not (single and gpus and self.memory_fraction(len(gpus)) and out_of_memory(log, start)):
                    raise
            finally:
                self._release(gpus)
            with log.open("a", encoding="utf-8") as f:
                f.write(
                    f"# out of memory at {len(gpus)} of {self.gpu_slots} slots: again with the whole card\n"
                )
            gpus = self._acquire(self.gpu_slots, rank, same_card=True)

    def _strike(self, log: Path) -> None:
        """A stage failed in a worker and passed as its own process: the worker caused it."""
        with self._cond:
            self._strikes += 1
            give_up = self.warm and self._strikes >= self.WARM_STRIKES
            if give_up:
                self.warm = False
        with log.open("a", encoding="utf-8") as f:
            f.write(
                f"# it passed as its own process: {self._strikes} stage(s) so far failed only in a worker"
                + ("; no more workers in this run\n" if give_up else "\n")
            )
        if give_up:
            self.close()

    def _run(
        self, stage: Stage, log: Path, gpus: list[str], shards: int, procs_n: int, hide_gpus: bool = False
    ) -> None:
        if gpus and not hide_gpus:
            self._make_room(gpus)
        return self._run_process(stage, log, gpus, shards, procs_n, hide_gpus)

    def _run_process(
        self, stage: Stage, log: Path, gpus: list[str], shards: int, procs_n: int, hide_gpus: bool = False
    ) -> None:
        base_env = dict(self.env)
        if hide_gpus:  # a CPU stage: no card visible, no memory share
            base_env["CUDA_VISIBLE_DEVICES"] = ""
            base_env.pop(GPU_SHARE_ENV, None)
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("a", encoding="utf-8") as f:
            f.write(f"$ {stage.command}\n")
            f.flush()
            if shards > 1:
                n = shards if not gpus else min(shards, len(gpus))
                procs = []
                for i in range(n):
                    env = dict(base_env)
                    if gpus:
                        env["CUDA_VISIBLE_DEVICES"] = gpus[i]
                        self._share(env, 1)
                    argv = [sys.executable, "-m", "matsql.cli", *shard_argv(stage.argv, i, n, stage.out)]
                    f.write(f"$ shard {i}/{n}: {' '.join(argv[3:])}\n")
                    procs.append(self._spawn(argv, env))
                rcs = self._drain(procs, f)
                if any(rcs):
                    raise StageFailed(f"stage {stage.name}: shard exit codes {rcs}; see {log}")
                merge_shards(stage.out, n)
                return
            argv = _argv(stage)
            env = dict(base_env)
            cards = list(dict.fromkeys(gpus))
            if gpus:
                env["CUDA_VISIBLE_DEVICES"] = ",".join(cards)
                self._share(env, gpus.count(cards[0]) if len(cards) == 1 else 1)
            if procs_n > 1 and len(cards) > 1:
                argv = [
                    sys.executable,
                    "-m",
                    "accelerate.commands.launch",
                    "--num_processes",
                    str(len(cards)),
                    "--multi_gpu",
                    "-m",
                    "matsql.cli",
                    *stage.argv,
                ]
            rcs = self._drain([self._spawn(argv, env)], f)
        if rcs[0] != 0:
            raise StageFailed(f"stage {stage.name} failed with exit code {rcs[0]}; see {log}")


def _run_cli(argv: list[str], extra_env: dict[str, str] | None = None) -> None:  # pragma: no cover
    env = {**os.environ, **(extra_env or {})}
    subprocess.run([sys.executable, "-m", "matsql.cli", *argv], check=True, env=env)


def _run_argv(argv: list[str], extra_env: dict[str, str] | None = None) -> None:
    """What a SLURM job runs: ``argv`` (``python -m matsql.cli ...`` or ``accelerate launch``)."""
    env = {**os.environ, **(extra_env or {})}
    subprocess.run(argv, check=True, env=env)


#: Plan/CLI SLURM keys that submitit takes with a ``slurm_`` prefix (see ``sbatch``).
SLURM_KEYS = (
    "account",
    "partition",
    "qos",
    "constraint",
    "exclude",
    "nodelist",
    "comment",
    "gres",
    "mail_type",
    "mail_user",
    "wckey",
    "exclusive",
    "array_parallelism",
    "setup",
    "srun_args",
    "additional_parameters",
)


def slurm_parameters(params: dict[str, object], where: str = "slurm") -> dict[str, object]:
    """Plan/CLI SLURM settings -> submitit parameters: ``account`` -> ``slurm_account``;
    submitit's own names (``timeout_min``, ``slurm_qos``) pass unchanged; any other key is an
    extra ``#SBATCH --KEY=VALUE`` line (``slurm_additional_parameters``)."""
    generic = ("timeout_min", "mem_gb", "nodes", "cpus_per_task", "gpus_per_node", "tasks_per_node")
    plan_names = {"time_min": "timeout_min", "cpus": "cpus_per_task", "gpus": "gpus_per_node"}
    out: dict[str, object] = {}
    extra: dict[str, object] = {}
    for k, v in params.items():
        k = plan_names.get(k, k)  # the names a stage's resources use work here too
        if k in generic or k.startswith("slurm_"):
            out[k] = v
        elif k in SLURM_KEYS:
            out[f"slurm_{k}"] = v
        else:
            extra[k] = v
    if extra:
        merged = dict(out.get("slurm_additional_parameters") or {})  # type: ignore[call-overload]
        out["slurm_additional_parameters"] = {**extra, **merged}
    return out


class SlurmExecutor:
    """One SLURM job per stage through submitit; waits for it.

    The job asks for what the stage declares in ``resources``: ``gpus`` (per job, or per shard),
    ``cpus`` (per task), ``mem_gb``, ``time_min``. ``shards: N`` submits an array of N jobs, one
    per shard (``--shard I/N``), and merges their files as the local executor does;
    ``processes: N`` runs ``accelerate launch --num_processes N`` in one job with N GPUs.
    ``params`` (the plan's ``slurm:`` mapping, then ``--slurm KEY=VALUE`` and ``--partition``
    etc. from the command line) and the stage's ``resources.slurm`` go to every job:
    ``account``, ``partition``, ``qos``, ``constraint``, ... or any sbatch option.
    Jobs are named ``<job_name>-<stage>``; ``job_name`` stays ``vl`` unless changed.

    A stage without ``time_min`` asks for ``timeout_min`` of the plan/CLI parameters, else
    DEFAULT_TIME_MIN (submitit's own default, 5 minutes, would kill most stages).

    Each stage gets a fresh submitit executor, so one stage's GPUs never leak into the next
    job. ``cluster="debug"`` runs each job in-process (submitit's debug executor);
    ``make_executor`` replaces submitit's AutoExecutor (tests pass a recorder).
    """

    DEFAULT_TIME_MIN = 24 * 60

    def __init__(
        self,
        folder: Path,
        job_name: str = "vl",
        cluster: str | None = None,
        env: dict[str, str] | None = None,
        make_executor: Callable[[], Any] | None = None,
        **params: object,
    ):
        self.env = dict(env or {})
        if make_executor is None:
            import submitit

            def make_executor() -> Any:
                return submitit.AutoExecutor(folder=str(folder), cluster=cluster)

        self.make_executor = make_executor
        self.job_name = job_name
        self.params = dict(params)
        self._lock = threading.Lock()  # update_parameters + submit is one step

    def job_parameters(self, stage: Stage) -> dict[str, object]:
        """submitit parameters of this stage's job(s)."""
        res = stage.resources
        shards = int(res.get("shards", 1) or 1)
        procs = int(res.get("processes", 1) or 1)
        params = slurm_parameters({**self.params, **stage.slurm})
        params["name"] = f"{self.job_name}-{stage.name}"
        params.setdefault("timeout_min", self.DEFAULT_TIME_MIN)
        gpus = res.get("gpus")
        if gpus is None and procs > 1:
            gpus = procs  # one GPU per training process
        if gpus:  # gpus: 0 (a CPU stage) asks for none rather than for zero
            params["gpus_per_node"] = int(gpus)
        if "cpus" in res:
            params["cpus_per_task"] = int(res["cpus"])
        if "mem_gb" in res:
            params["mem_gb"] = float(res["mem_gb"])
        if "time_min" in res:
            params["timeout_min"] = int(res["time_min"])
        params["tasks_per_node"] = 1  # one launcher per job (accelerate starts the processes)
        params["nodes"] = 1
        if shards > 1 and "slurm_array_parallelism" not in params:
            params["slurm_array_parallelism"] = shards
        return params

    def commands(self, stage: Stage) -> list[list[str]]:
        """The command of each job: one, or one per shard."""
        shards = int(stage.resources.get("shards", 1) or 1)
        procs = int(stage.resources.get("processes", 1) or 1)
        py = [sys.executable, "-m"]
        if shards > 1:
            return [[*py, "matsql.cli", *shard_argv(stage.argv, i, shards, stage.out)] for i in range(shards)]
        if procs > 1:
            launch = ["accelerate.commands.launch", "--num_processes", str(procs), "--multi_gpu"]
            return [[*py, *launch, "-m", "matsql.cli", *stage.argv]]
        return [[*py, "matsql.cli", *stage.argv]]

    def run(self, stage: Stage, log: Path, on_start: OnStart | None = None) -> None:
        params = self.job_parameters(stage)
        cmds = self.commands(stage)
        with self._lock:
            ex = self.make_executor()
            ex.update_parameters(**params)
            if len(cmds) > 1:  # an array job: one task per shard
                with ex.batch():
                    jobs = [ex.submit(_run_argv, c, self.env) for c in cmds]
            else:
                jobs = [ex.submit(_run_argv, cmds[0], self.env)]
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("a") as f:
            f.write(f"$ {stage.command}\n")
            for c, job in zip(cmds, jobs, strict=True):
                f.write(f"submitted job {job.job_id}: {shlex.join(c[2:])}\n")
        errors = []
        for job in jobs:
            try:
                job.result()
            except Exception as e:
                errors.append(f"job {job.job_id}: {e}")
        if errors:
            raise StageFailed(f"stage {stage.name} failed: {'; '.join(errors)}")
        if len(cmds) > 1:
            merge_shards(stage.out, len(cmds))
