"""The whole system on one machine: a local Knative broker (``router``) and the supervisor of ``xpipe up``.

Local is production minus Kubernetes: the router reads the same Broker, Trigger and PingSource manifests
as the cluster and honours their filters and delivery settings, so what passes here behaves the same there.
"""
