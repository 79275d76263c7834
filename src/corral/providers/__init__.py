"""Adapters to model providers: the HTTP client the gateway calls upstreams with.

Belongs here: speaking the OpenAI-compatible wire to an upstream, pooled connections, and
translating transport failures into :mod:`corral.domain.errors`. Must not be here: who may call
which model, budgets or metering (that is :mod:`corral.control.gateway`'s); this package never
imports the control plane.
"""

from corral.providers.openai_compat import UpstreamReply, Upstreams, UpstreamStream

__all__ = ["UpstreamReply", "UpstreamStream", "Upstreams"]
