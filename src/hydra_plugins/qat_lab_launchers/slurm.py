"""Hydra's submitit Slurm launcher, made to survive jobs that Slurm kills.

The stock launcher collects results with `job.results()` in job order, so one job killed by Slurm
(time limit, scancel, out of memory, node failure) raises in the launching process and the rest of
the sweep's results are never read, while the killed job's run record still says `running`. This
launcher waits for every job, and for each one Slurm ended without a result it marks the run
record `failed` with the Slurm state, so the sweep table and the analysis see it. Requeue on
preemption or timeout is unchanged: submitit calls the launcher's `checkpoint`, which resubmits
the same job (up to `max_num_timeout` times); `run_job` then resumes from the job's checkpoint.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher as _HydraSlurmLauncher
from omegaconf import OmegaConf

from qat_lab.records import job_identity, mark_unfinished_failed, never_started_record, write_record

log = logging.getLogger(__name__)


class SlurmLauncher(_HydraSlurmLauncher):
    def _executor(self):
        import submitit

        executor = submitit.AutoExecutor(cluster="slurm", folder=self.params["submitit_folder"],
                                         slurm_max_num_timeout=self.params.get("max_num_timeout", 0))
        queue_keys = set(OmegaConf.structured(BaseQueueConf).keys())
        resources = {(k if k in queue_keys else f"slurm_{k}"): v for k, v in self.params.items()
                     if k not in ("submitit_folder", "max_num_timeout")}
        executor.update_parameters(**resources)
        return executor

    def _record_never_started(self, sweep_dir: Path, overrides: list[str], job_num: int, reason: str) -> None:
        """A job killed before it wrote a record still gets one, so nothing goes missing silently."""
        cfg = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
        name = str(cfg.hydra.job.override_dirname)
        job_dir = sweep_dir / str(cfg.hydra.sweep.subdir)
        task_cfg = OmegaConf.create({k: v for k, v in cfg.items() if k != "hydra"})
        write_record(job_dir, never_started_record(task_cfg, job_identity(job_dir, sweep_dir, name, job_num), reason))

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from submitit.core.utils import UncompletedJobError

        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        args = []
        for i, overrides in enumerate(job_overrides):
            log.info(f"\t#{initial_job_idx + i} : {' '.join(filter_overrides(overrides))}")
            args.append((list(overrides), "hydra.sweep.dir", initial_job_idx + i, f"job_id_for_{initial_job_idx + i}",
                         Singleton.get_state()))
        jobs = self._executor().map_array(self, *zip(*args))

        returns: list[JobReturn] = []
        for (overrides, _, job_num, _, _), job in zip(args, jobs):
            try:
                ret = job.results()[0]
                if ret.status == JobStatus.COMPLETED:
                    returns.append(ret)
                    continue
                # The task raised (run_job re-raises only what must end the job, e.g. submitit's
                # "timed out too many times"); its record already says failed.
                reason = f"{type(ret._return_value).__name__}: {ret._return_value}"
            except UncompletedJobError as e:  # killed: no result at all
                reason = f"killed by Slurm (job {job.job_id}, state {job.state}): {str(e).splitlines()[0]}"
                if mark_unfinished_failed(sweep_dir, job_num, reason) is None:
                    self._record_never_started(sweep_dir, overrides, job_num, reason)
            print(f"[{job_num}] {','.join(overrides)}: FAILED, {reason}", flush=True)
            # A completed JobReturn with no value: the sweeper goes on; the record says failed.
            returns.append(JobReturn(overrides=list(overrides), status=JobStatus.COMPLETED, _return_value=None))
        return returns
