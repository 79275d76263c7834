"""The model gateway's services: declared models, agents' gateway credentials, budgets,
rate limits and metering, and the handling of one OpenAI-compatible call.

Belongs here: deciding whether a call may go out (who calls, which org's model, which task,
which budgets and rates it is charged to), reserving what it could spend, calling the upstream
through :mod:`corral.providers` with the provider key read from the vault, settling on the
reported usage and recording it. Must not be here: HTTP parsing and the wire's error shape
(:mod:`corral.api.gateway_app`), the upstream's transport (:mod:`corral.providers`).
"""

from corral.control.gateway.calls import CallAnswer, ModelGateway
from corral.control.gateway.catalog import ModelCatalog
from corral.control.gateway.credentials import GatewayCredentials, Principal

__all__ = ["CallAnswer", "GatewayCredentials", "ModelCatalog", "ModelGateway", "Principal"]
