"""The server's Prometheus metrics (prometheus_client), in a registry of its own."""
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class ServingMetrics:
    """Requests, latencies, errors, feature fallbacks, the version served and rows not logged."""

    def __init__(self):
        self.registry = CollectorRegistry()
        self.requests = Counter("mlops_serving_requests", "Requests by route and status code",
                                ["route", "code"], registry=self.registry)
        self.latency = Histogram("mlops_serving_request_seconds", "Time to answer a request",
                                 ["route"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.errors = Counter("mlops_serving_errors", "Requests answered 4xx or 5xx", ["code"],
                              registry=self.registry)
        self.fallbacks = Counter("mlops_serving_feature_fallbacks",
                                 "Rows whose window features fell back to the defaults",
                                 registry=self.registry)
        self.switches = Counter("mlops_serving_model_switches", "Alias moves the server followed",
                                registry=self.registry)
        self.version = Gauge("mlops_serving_model_version", "The version served (1 for the current one)",
                             ["model", "version"], registry=self.registry)
        self.not_logged = Gauge("mlops_serving_log_rows_not_logged",
                                "Rows not written to the inference log (queue full or write failed)",
                                registry=self.registry)
        self.logged = Gauge("mlops_serving_log_rows_written", "Rows written to the inference log",
                            registry=self.registry)
        self.dead_lettered = Gauge("mlops_serving_log_rows_dead_lettered",
                                   "Rows the inference log refused, set aside in its dead-letter file",
                                   registry=self.registry)

    def observe(self, route: str, code: int, seconds: float) -> None:
        self.requests.labels(route, str(code)).inc()
        self.latency.labels(route).observe(seconds)
        if code >= 400:
            self.errors.labels(str(code)).inc()

    def serving(self, model) -> None:
        """Name the version now served."""
        self.version.clear()
        self.version.labels(model.name, model.version).set(1)

    def read_log_counts_from(self, request_log) -> None:
        """The log gauges read ``request_log``'s counters at each scrape."""
        self.not_logged.set_function(lambda: request_log.dropped)
        self.logged.set_function(lambda: request_log.written)
        self.dead_lettered.set_function(lambda: request_log.dead_lettered)
