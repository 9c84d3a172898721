"""gisjob operator: runs GisJobs on Kubernetes (CRD, pod builder, reconciler, status)."""

__version__ = "0.1.0"
