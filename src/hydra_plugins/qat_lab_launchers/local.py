"""launcher=local: Hydra's basic launcher (jobs one after another in this process), plus two things.

- Progress: before each job, "job k/n" and, from the jobs done so far, an estimate of when the
  sweep ends; after the last, the sweep's wall time.
- A job whose set-up inside Hydra fails (its dir cannot be created, its .hydra config files or its
  log cannot be written: a full or read-only disk), or that raises past qat_lab.jobs, is one line,
  counted as failed, and the sweep goes on; with the basic launcher that ended the whole sweep
  (with three tracebacks for a full disk).
Everything else is Hydra's own code path (run_job), so a job behaves exactly as under the basic
launcher; SIGINT/SIGTERM still stop the sweep (qat_lab.interrupts).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Sequence

from hydra._internal.core_plugins.basic_launcher import BasicLauncher
from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, run_job, setup_globals
from omegaconf import open_dict

log = logging.getLogger("qat_lab")


def eta_line(k: int, n: int, done_s: list[float]) -> str:
    """'job k/n' plus, once a job has finished, the estimated time left (mean job time x jobs left)."""
    line = f"job {k}/{n}"
    if done_s and n > len(done_s):
        left = sum(done_s) / len(done_s) * (n - k + 1)
        line += f" (sweep: {len(done_s)} done in {_hms(sum(done_s))}, about {_hms(left)} left)"
    return line


def _hms(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


class LocalLauncher(BasicLauncher):
    @staticmethod
    def _failed(idx: int, sweep_config, overrides, error: BaseException) -> JobReturn:
        """One line and a failed outcome; Hydra's basic sweeper would end the sweep on this job."""
        from qat_lab.jobs import FAILED

        name = str(sweep_config.hydra.job.override_dirname) or "default"
        FAILED.append(name)
        log.info(f"[{idx}] {name}: FAILED: {type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}")
        return JobReturn(overrides=list(overrides), status=JobStatus.COMPLETED, _return_value={"status": "failed"})

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        setup_globals()
        assert self.hydra_context is not None and self.config is not None and self.task_function is not None
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        n = len(job_overrides)
        returns: list[JobReturn] = []
        durations: list[float] = []
        for i, overrides in enumerate(job_overrides):
            idx = initial_job_idx + i
            log.info(f"{eta_line(i + 1, n, durations)}: {' '.join(filter_overrides(overrides))}")
            sweep_config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
            with open_dict(sweep_config):
                sweep_config.hydra.job.id = idx
                sweep_config.hydra.job.num = idx
            start = time.perf_counter()
            try:
                ret = run_job(hydra_context=self.hydra_context, task_function=self.task_function, config=sweep_config,
                              job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir")
                if ret.status == JobStatus.FAILED:  # an exception qat_lab.jobs did not record (a bug)
                    ret = self._failed(idx, sweep_config, overrides, ret._return_value)
            except OSError as e:  # Hydra's own writes for the job (dir, .hydra/, log file)
                ret = self._failed(idx, sweep_config, overrides, e)
            returns.append(ret)
            durations.append(time.perf_counter() - start)
            configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        if n > 1:
            log.info(f"sweep: {n} jobs in {_hms(sum(durations))}")
        return returns
