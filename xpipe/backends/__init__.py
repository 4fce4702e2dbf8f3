"""Execution backends: where step services run (Knative in a cluster, processes on one machine)."""
