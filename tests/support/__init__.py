"""What the tests share: process control (``procs``), the real S3 server (``s3server``) and SLURM
clusters (``slurmcluster``, ``etchosts``), CPU launches (``cpu_launch``), system packages
(``system``), offline ImageNet weights (``mobilenet_weights``); ``launched/`` holds the scripts the
tests run under ``accelerate launch``."""
