"""`llmc controller`: in-cluster reconciliation of LLMProvider/LLMRoute into Istio objects.

The controller runs the same pipeline as `llmc render` (:func:`compiler.pipeline.compile_documents`)
on the LLMProvider/LLMRoute objects it watches, so what it applies is exactly what `render` prints
for the same input (plus ownerReferences and a content hash annotation). Only this package imports
the Kubernetes client; the compiler core never does.

* :mod:`.reconcile` — pure: sources → desired objects and per-source status conditions; invalid
  sources are left out so one bad object never stops the others.
* :mod:`.kube` — the API calls: list/watch, server-side apply (field manager ``llmc``), pruning of
  objects it owns, status patches, with retries and backoff.
* :mod:`.leader` — leader election on a ``coordination.k8s.io`` Lease.
* :mod:`.runtime` — the process: watch threads, the reconcile loop, ``/healthz``, ``/readyz``,
  ``/metrics``, structured logs, graceful shutdown.
"""
