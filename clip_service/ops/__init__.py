"""Operations: structured logs, request context, Prometheus metrics, readiness."""
