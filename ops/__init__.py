"""Operations: the PRD's success metrics, Prometheus metrics, readiness. Reads the other apps' rows."""
