"""qat_lab's Hydra launchers (Hydra only loads launchers from the hydra_plugins namespace).

    local.py   launcher=local: jobs one after another in this process (Hydra's basic launcher),
               with sweep progress, and a job whose Hydra-side set-up fails (a full or read-only
               disk) recorded as failed while the sweep goes on
    slurm.py   launcher=slurm / slurm_cpu: Hydra's submitit launcher, with jobs that Slurm kills
               recorded as failed
"""
