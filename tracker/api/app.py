"""The API application: Connexion AsyncApp built from swagger/openapi.yaml."""

from __future__ import annotations

import contextlib
import functools
import gc
import logging
from pathlib import Path

import connexion
import orjson
from connexion.datastructures import MediaTypeDict
from connexion.decorators import parameter as connexion_parameter
from connexion.jsonifier import Jsonifier
from connexion.middleware import ConnexionMiddleware, MiddlewarePosition
from connexion.middleware.response_validation import ResponseValidationMiddleware
from connexion.middleware.security import SecurityMiddleware
from connexion.validators import VALIDATOR_MAP

from tracker.api.allow_header import AllowHeaderMiddleware
from tracker.api.auth import Authenticator, AuthMiddleware
from tracker.api.lean import TraceDocumentMiddleware
from tracker.api.limits import TokenLimits
from tracker.api.metrics import ApiMetrics, MetricsMiddleware
from tracker.api.oidc import OidcVerifier
from tracker.api.problems import BodyValidator, ParameterValidator, body_not_utf8, database_unavailable
from tracker.api.replicas import Reads, ReplicaHeaderMiddleware
from tracker.db import TRANSIENT_ERRORS, create_pool, keep_session
from tracker.producer import EventPublisher
from tracker.settings import Settings
from tracker.spec import spec
from tracker.web.pages import WebPages

log = logging.getLogger("tracker.api")

SPEC_DIR = Path(__file__).resolve().parent.parent.parent / "swagger"


# Connexion 3 decorates a handler again for every request (its decorators take the operation
# from the request's scope), and so inspects the handler's signature every time with
# inspect.signature: 4-5 % of the API's samples under bench/query's trace lookup (py-spy). A
# function's signature does not change; the answer is cached per function (its callers only
# read the list it returns). Alternating runs with and without it did not show the gain above
# this machine's noise (680-960 µs of API CPU per request either way).
connexion_parameter.inspect_function_arguments = functools.lru_cache(maxsize=256)(
    connexion_parameter.inspect_function_arguments
)


class OrjsonModule:
    """The json-module interface Connexion's Jsonifier wants, backed by orjson (several times faster)."""

    @staticmethod
    def dumps(data, **_ignored) -> str:
        return orjson.dumps(data).decode()

    @staticmethod
    def loads(data):
        return orjson.loads(data)


def create_app(settings: Settings, *, validate_responses: bool = False) -> connexion.AsyncApp:
    metrics = ApiMetrics()

    @contextlib.asynccontextmanager
    async def lifespan(app):
        # The pool lives as long as the server; handlers read it from request.state.
        # No server-side reset on release: the API's queries leave nothing in the session.
        pool = await create_pool(settings, reset=keep_session)
        # Handlers read through ``reads``: the replicas of DATABASE_READ_URLS when set, with
        # the primary behind them; else the primary's pool itself.
        replicas = await Reads(settings, pool, metrics).start() if settings.read_urls else None
        # For HTTP ingestion only; reads never need Kafka, and the API starts without it.
        producer = EventPublisher(settings) if settings.kafka_bootstrap_servers else None
        # What start-up loaded (the spec, its validators, the routes) is never garbage: left
        # out of the collector's scans, a full collection takes ~1 ms instead of ~30, which a
        # request that allocates much (a trace page of 1,000 events) met at its tail (scratch:
        # max 47 -> 17.5 ms over 70 requests; the consumer does the same).
        gc.freeze()
        try:
            yield {
                "pool": pool,
                "reads": replicas or pool,
                "replicas": replicas,
                "metrics": metrics,
                "settings": settings,
                "producer": producer,
            }
        finally:
            if producer is not None:
                await producer.close()
            if replicas is not None:
                await replicas.close()
            await pool.close()

    # The spec declares no security scheme, so Connexion's security layer would only cost
    # every request a pass through it (bench/query).
    # Likewise response validation, when it is off (it is on in tests).
    skipped = {SecurityMiddleware} | (set() if validate_responses else {ResponseValidationMiddleware})
    middlewares = [m for m in ConnexionMiddleware.default_middlewares if m not in skipped]
    app = connexion.AsyncApp(
        __name__,
        specification_dir=str(SPEC_DIR),
        lifespan=lifespan,
        jsonifier=Jsonifier(OrjsonModule),
        middlewares=middlewares,
    )
    app.add_api(
        "openapi.yaml",
        validate_responses=validate_responses,
        strict_validation=True,
        validator_map={
            "parameter": ParameterValidator,
            "body": MediaTypeDict({**VALIDATOR_MAP["body"], "*/*json": BodyValidator}),
        },
    )
    app.add_middleware(MetricsMiddleware, position=MiddlewarePosition.BEFORE_EXCEPTION, metrics=metrics)
    authenticator: Authenticator | None = None
    limits: TokenLimits | None = None
    if settings.auth_enabled:
        authenticator = Authenticator(
            settings.auth_cache_seconds, metrics, OidcVerifier(settings) if settings.oidc_issuer else None
        )
        limits = TokenLimits(settings.rate_limit, settings.rate_burst, settings.max_concurrent)
        app.add_middleware(
            AuthMiddleware,
            position=MiddlewarePosition.BEFORE_VALIDATION,
            spec=spec(),
            authenticator=authenticator,
            limits=limits,
        )
    # The web pages at / (tracker/web), ahead of Connexion's routing, with the same sign-in checks.
    app.add_middleware(
        WebPages,
        position=MiddlewarePosition.BEFORE_SWAGGER,
        auth_enabled=settings.auth_enabled,
        authenticator=authenticator,
        limits=limits,
    )
    # The trace document without Connexion's per-request handler decoration (tracker/api/lean.py).
    app.add_middleware(TraceDocumentMiddleware, position=MiddlewarePosition.BEFORE_CONTEXT)
    if settings.read_urls:
        app.add_middleware(ReplicaHeaderMiddleware, position=MiddlewarePosition.BEFORE_EXCEPTION)
    app.add_middleware(AllowHeaderMiddleware, position=MiddlewarePosition.BEFORE_EXCEPTION, spec_paths=spec()["paths"])
    for exc_type in TRANSIENT_ERRORS:
        app.add_error_handler(exc_type, database_unavailable)
    app.add_error_handler(UnicodeDecodeError, body_not_utf8)
    return app
