"""`llmc controller`: in-cluster reconciliation of LLMProvider/LLMRoute into Istio objects.

The controller runs the same pipeline as `llmc render` (:func:`compiler.pipeline.compile_documents`)
on the LLMProvider/LLMRoute objects it watches, so what it applies is exactly what `render` prints
for the same input (plus ownerReferences and a content hash annotation). Only this package imports
the Kubernetes client; the compiler core never does.

* :mod:`.reconcile` — pure: the work key of a source, sources → desired objects, what to write
  (drift, prune, last known good, tenancy) and per-source status conditions.
* :mod:`.queue` — the keyed work queue (debounce, per-key backoff) and the client-side rate limiter.
* :mod:`.informer` — list-then-watch caches of the sources and of the objects the controller applied.
* :mod:`.kube` — the API calls: list/watch, server-side apply (field manager ``llmc-controller``),
  deletes, status patches, Secret existence checks; every call with a timeout, every write fenced.
* :mod:`.leader` — leader election on a ``coordination.k8s.io`` Lease by client-go's rules, and the
  write fence.
* :mod:`.rbac` — the ClusterRole rules per flag, derived from the table of generated kinds (what
  ``deploy/rbac.yaml`` and ``deploy/components/`` grant; a test compares them).
* :mod:`.runtime` — the process: informers, workers, ``/healthz``, ``/readyz``, ``/metrics``,
  structured logs, graceful shutdown, exit on lost leadership.
"""
