"""Tests of the launchers: launch/ (accelerate configs), slurm/ and k8s/."""
