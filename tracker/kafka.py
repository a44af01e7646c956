"""How every Kafka client of ours connects: the security options of Settings, in one place.

The consumer and its dead-letter producer, the API's producer, `tracker send` and `tracker
topics` pass ``client_options(settings)`` to aiokafka; a service embedding ``tracker.client``
passes it as ``producer_options`` (README: "Kafka credentials"). aiokafka does the SASL
handshake (PLAIN, SCRAM-SHA-256/512) and TLS; we only read the settings once and say clearly
when the broker refuses them.
"""

from __future__ import annotations

from typing import Any

from aiokafka.errors import KafkaConnectionError, KafkaError
from aiokafka.helpers import create_ssl_context

from tracker.settings import Settings, SettingsError

PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


def client_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for AIOKafkaConsumer, AIOKafkaProducer and AIOKafkaAdminClient."""
    protocol = settings.kafka_security_protocol.upper()
    if protocol not in PROTOCOLS:
        raise SettingsError(f"KAFKA_SECURITY_PROTOCOL must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
    options: dict[str, Any] = {"security_protocol": protocol}
    if protocol.startswith("SASL_"):
        mechanism = settings.kafka_sasl_mechanism.upper()
        if mechanism not in MECHANISMS:
            raise SettingsError(f"KAFKA_SASL_MECHANISM must be one of {', '.join(MECHANISMS)}, got {mechanism!r}")
        if not settings.kafka_sasl_username or settings.kafka_sasl_password is None:
            raise SettingsError(f"{protocol} needs KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD")
        options.update(
            sasl_mechanism=mechanism,
            sasl_plain_username=settings.kafka_sasl_username,
            sasl_plain_password=settings.kafka_sasl_password,
        )
    if protocol.endswith("SSL"):
        # The system's CAs, or KAFKA_SSL_CAFILE's; the broker's name is checked.
        options["ssl_context"] = create_ssl_context(cafile=settings.kafka_ssl_cafile)
    return options


def explain(settings: Settings, error: BaseException) -> str | None:
    """A sentence for a Kafka failure that the security settings may explain, else None.

    aiokafka reports refused credentials as a failed bootstrap ("Unable to bootstrap from ...")
    after its SASL exchange failed; a broker that speaks another protocol, likewise."""
    if not isinstance(error, KafkaConnectionError | KafkaError):
        return None
    text = str(error)
    protocol = settings.kafka_security_protocol.upper()
    who = (
        f"{protocol}, {settings.kafka_sasl_mechanism.upper()} as {settings.kafka_sasl_username!r}"
        if protocol.startswith("SASL_")
        else protocol
    )
    if "Authentication" in type(error).__name__ or "authentication" in text.lower() or "bootstrap" in text.lower():
        return (
            f"could not connect to Kafka at {settings.kafka_bootstrap_servers} as configured ({who}): {text}. "
            "If the broker is up, it refused these credentials or speaks another protocol on that port: check "
            "KAFKA_SECURITY_PROTOCOL, KAFKA_SASL_MECHANISM, KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD."
        )
    return None
