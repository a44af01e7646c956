"""The one settings object. Read from the environment once, frozen, passed in.

Nothing else in the project reads ``os.environ``: a child process gets its environment
from ``Settings.child_environ``.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from typing import Any

# Every environment variable the code reads, with its default. tests/ checks
# docker-compose.yml against this table, so a typo there fails the build.
ENVIRONMENT: dict[str, tuple[str, str | None]] = {
    # field name: (environment variable, default)
    "kafka_bootstrap_servers": ("KAFKA_BOOTSTRAP_SERVERS", None),
    # How every Kafka client of ours authenticates (tracker/kafka.py): PLAINTEXT, SSL,
    # SASL_PLAINTEXT or SASL_SSL; SASL by PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512; a CA file for SSL.
    "kafka_security_protocol": ("KAFKA_SECURITY_PROTOCOL", "PLAINTEXT"),
    "kafka_sasl_mechanism": ("KAFKA_SASL_MECHANISM", "PLAIN"),
    "kafka_sasl_username": ("KAFKA_SASL_USERNAME", None),
    "kafka_sasl_password": ("KAFKA_SASL_PASSWORD", None),
    "kafka_ssl_cafile": ("KAFKA_SSL_CAFILE", None),
    "database_url": ("DATABASE_URL", None),
    # Streaming replicas the API reads from, comma-separated (tracker/api/replicas.py).
    "database_read_urls": ("DATABASE_READ_URLS", None),
    "replica_max_lag_seconds": ("TRACKER_REPLICA_MAX_LAG", "10"),
    "replica_check_seconds": ("TRACKER_REPLICA_CHECK_SECONDS", "1"),
    "topic": ("TRACKER_TOPIC", "tracker.events"),
    "dlq_topic": ("TRACKER_DLQ_TOPIC", "tracker.events.dlq"),
    "consumer_group": ("TRACKER_CONSUMER_GROUP", "tracker"),
    "consumer_instance_id": ("TRACKER_CONSUMER_INSTANCE_ID", None),
    "topic_partitions": ("TRACKER_TOPIC_PARTITIONS", "6"),
    "session_timeout_ms": ("TRACKER_KAFKA_SESSION_TIMEOUT_MS", "10000"),
    "batch_max_records": ("TRACKER_BATCH_MAX_RECORDS", "5000"),
    "batch_timeout_ms": ("TRACKER_BATCH_TIMEOUT_MS", "100"),
    # How long the broker may hold a fetch to gather FETCH_MIN_BYTES (consumer/service.py), and
    # how often a writer's stored offsets are committed to Kafka (consumer/sink.py).
    "fetch_max_wait_ms": ("TRACKER_FETCH_MAX_WAIT_MS", "10"),
    "fetch_min_bytes": ("TRACKER_FETCH_MIN_BYTES", str(64 * 1024)),
    "commit_interval_ms": ("TRACKER_COMMIT_INTERVAL_MS", "1000"),
    "max_message_bytes": ("TRACKER_MAX_MESSAGE_BYTES", str(1024 * 1024)),
    "retry_max_seconds": ("TRACKER_RETRY_MAX_SECONDS", "30"),
    "dlq_max_ratio": ("TRACKER_DLQ_MAX_RATIO", "0"),
    "dlq_window_messages": ("TRACKER_DLQ_WINDOW_MESSAGES", "1000"),
    "retention_days": ("TRACKER_RETENTION_DAYS", "14"),
    "maintenance_interval_seconds": ("TRACKER_MAINTENANCE_INTERVAL_SECONDS", "3600"),
    "api_host": ("TRACKER_API_HOST", "127.0.0.1"),
    "api_port": ("TRACKER_API_PORT", "8080"),
    "api_validate_responses": ("TRACKER_API_VALIDATE_RESPONSES", "false"),
    "api_workers": ("TRACKER_API_WORKERS", "1"),
    # Bearer tokens on the API (tracker/api/auth.py), and how long a token's record is cached.
    # Unset means off, except under `tracker up`, which then turns it on.
    "auth": ("TRACKER_AUTH", None),
    "auth_cache_seconds": ("TRACKER_AUTH_CACHE_SECONDS", "5"),
    # Per token and API process (tracker/api/limits.py): requests per second (0: no limit), the
    # burst above that rate, and requests in progress at once (0: no cap).
    "rate_limit": ("TRACKER_RATE_LIMIT", "100"),
    "rate_burst": ("TRACKER_RATE_BURST", "200"),
    "max_concurrent": ("TRACKER_MAX_CONCURRENT", "32"),
    # The CLI's token for the API.
    "api_token": ("TRACKER_API_TOKEN", None),
    # OIDC (tracker/api/oidc.py): JWTs of this issuer and audience, keys from a file, a URL or
    # the issuer's discovery document; how their claims map to scopes and tenants.
    "oidc_issuer": ("TRACKER_OIDC_ISSUER", None),
    "oidc_audience": ("TRACKER_OIDC_AUDIENCE", None),
    "oidc_jwks_url": ("TRACKER_OIDC_JWKS_URL", None),
    "oidc_jwks_file": ("TRACKER_OIDC_JWKS_FILE", None),
    "oidc_scope_claim": ("TRACKER_OIDC_SCOPE_CLAIM", "scope"),
    "oidc_scope_prefix": ("TRACKER_OIDC_SCOPE_PREFIX", "tracker:"),
    "oidc_tenant_claims": ("TRACKER_OIDC_TENANT_CLAIMS", ""),
    # A first admin token, chosen by the operator (docker-compose.yml): `tracker migrate` stores it.
    "admin_token": ("TRACKER_ADMIN_TOKEN", None),
    "consumer_host": ("TRACKER_CONSUMER_HOST", "127.0.0.1"),
    "consumer_port": ("TRACKER_CONSUMER_PORT", "9090"),
    "db_pool_min": ("TRACKER_DB_POOL_MIN", "1"),
    "db_pool_max": ("TRACKER_DB_POOL_MAX", "10"),
    "consumer_db_pool_max": ("TRACKER_CONSUMER_DB_POOL_MAX", "3"),
    "consumer_writers": ("TRACKER_CONSUMER_WRITERS", "2"),
    "consumer_processes": ("TRACKER_CONSUMER_PROCESSES", "1"),
    "metrics_max_services": ("TRACKER_METRICS_MAX_SERVICES", "50"),
    "metrics_max_statuses": ("TRACKER_METRICS_MAX_STATUSES", "20"),
    "log_level": ("TRACKER_LOG_LEVEL", "INFO"),
    "state_dir": ("TRACKER_STATE_DIR", ".tracker"),
    "api_url": ("TRACKER_API_URL", "http://127.0.0.1:8080"),
    # The local Kafka of bin/run and the tests only: which Java, and where its jars are cached.
    "java_home": ("JAVA_HOME", None),
    "cache_home": ("XDG_CACHE_HOME", None),
}


class SettingsError(ValueError):
    """A setting is missing or malformed; the message names the variable."""


def _parse(kind: str, var: str, raw: str | None) -> Any:
    """One value by its field's declared type (annotations are strings here)."""
    if kind in ("int", "float"):
        try:
            return int(raw) if kind == "int" else float(raw)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise SettingsError(f"{var} must be {'an integer' if kind == 'int' else 'a number'}, got {raw!r}") from None
    if kind == "bool":
        if str(raw).lower() not in ("true", "false", "1", "0", "yes", "no"):
            raise SettingsError(f"{var} must be true or false, got {raw!r}")
        return str(raw).lower() in ("true", "1", "yes")
    return raw


@dataclasses.dataclass(frozen=True)
class Settings:
    kafka_bootstrap_servers: str | None
    kafka_security_protocol: str
    kafka_sasl_mechanism: str
    kafka_sasl_username: str | None
    kafka_sasl_password: str | None
    kafka_ssl_cafile: str | None
    database_url: str | None
    database_read_urls: str | None
    replica_max_lag_seconds: float
    replica_check_seconds: float
    topic: str
    dlq_topic: str
    consumer_group: str
    consumer_instance_id: str | None
    topic_partitions: int
    session_timeout_ms: int
    batch_max_records: int
    batch_timeout_ms: int
    fetch_max_wait_ms: int
    fetch_min_bytes: int
    commit_interval_ms: int
    max_message_bytes: int
    retry_max_seconds: int
    dlq_max_ratio: float
    dlq_window_messages: int
    retention_days: int
    maintenance_interval_seconds: int
    api_host: str
    api_port: int
    api_validate_responses: bool
    api_workers: int
    auth: str | None
    auth_cache_seconds: float
    rate_limit: float
    rate_burst: float
    max_concurrent: int
    api_token: str | None
    admin_token: str | None
    oidc_issuer: str | None
    oidc_audience: str | None
    oidc_jwks_url: str | None
    oidc_jwks_file: str | None
    oidc_scope_claim: str
    oidc_scope_prefix: str
    oidc_tenant_claims: str
    consumer_host: str
    consumer_port: int
    db_pool_min: int
    db_pool_max: int
    consumer_db_pool_max: int
    consumer_writers: int
    consumer_processes: int
    metrics_max_services: int
    metrics_max_statuses: int
    log_level: str
    state_dir: str
    api_url: str
    java_home: str | None
    cache_home: str | None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        types = {f.name: str(f.type) for f in dataclasses.fields(cls)}  # strings: see _parse
        for field, (var, default) in ENVIRONMENT.items():
            raw = environ.get(var) or default
            values[field] = _parse(types[field], var, raw)
        values.update(overrides)
        return cls(**values)

    def require_services(self) -> Settings:
        """Fail early, naming the variable, when a process needs both services."""
        missing = [
            var
            for field, (var, _) in ENVIRONMENT.items()
            if field in ("kafka_bootstrap_servers", "database_url") and not getattr(self, field)
        ]
        if missing:
            raise SettingsError(f"{' and '.join(missing)} must be set (or use bin/run, which starts local ones)")
        return self

    @property
    def read_urls(self) -> list[str]:
        """DATABASE_READ_URLS as a list (empty: the API reads from DATABASE_URL)."""
        return [u.strip() for u in (self.database_read_urls or "").split(",") if u.strip()]

    @property
    def auth_enabled(self) -> bool:
        """TRACKER_AUTH: on or off (nothing else, so that a typo cannot leave the API open);
        unset is off."""
        if self.auth not in ("on", "off", None):
            raise SettingsError(f"TRACKER_AUTH must be on or off, got {self.auth!r}")
        return self.auth == "on"

    def masked(self) -> dict[str, Any]:
        """The settings as a dict for the start-up log, passwords and tokens hidden."""
        out = dataclasses.asdict(self)
        for key in ("api_token", "admin_token", "kafka_sasl_password"):
            if out[key]:
                out[key] = "***"
        for key in ("database_url", "database_read_urls"):
            if out[key]:
                out[key] = re.sub(r"(://[^:/@]+:)[^@,]*@", r"\1***@", out[key])
        return out

    def as_environ(self) -> dict[str, str]:
        """The environment variables that reproduce these settings in a child process."""
        out = {}
        for field, (var, _) in ENVIRONMENT.items():
            value = getattr(self, field)
            if value is not None:
                out[var] = str(value).lower() if isinstance(value, bool) else str(value)
        return out

    def child_environ(self, inherited: Mapping[str, str] | None = None) -> dict[str, str]:
        """A child process's whole environment: ours (PATH, locale, ...) without any of our
        variables, then these settings' own, so that the child sees exactly what this process
        resolved and not a stale value left in the caller's environment."""
        inherited = os.environ if inherited is None else inherited
        ours = {var for var, _ in ENVIRONMENT.values()}
        return {**{k: v for k, v in inherited.items() if k not in ours}, **self.as_environ()}
