"""Names the stack and the function code must agree on, and that batchdrop.config does not hold.

The environment variable names, bucket prefixes and the due index come from batchdrop.config; this module
holds the rest, so no other infra module spells a shared name.
"""

from __future__ import annotations

DEFAULT_STACK_NAME = "Batchdrop"

# Powertools: the service name and the namespace of the metrics the functions emit.
SERVICE = "batchdrop"
METRICS_NAMESPACE = "batchdrop"
# Emitted by the poll function (Powertools adds the dimension service=SERVICE) for batches that have
# outlived the provider's window.
STUCK_BATCHES_METRIC = "StuckBatches"

# The job table's keys and its TTL attribute (batchdrop.adapters.store writes them).
TABLE_PARTITION_KEY = "pk"
TABLE_SORT_KEY = "sk"
TABLE_TTL_ATTRIBUTE = "expires_at"

# The functions, each named by its module in batchdrop.handlers.
SUBMIT = "submit"
POLL = "poll"
COMPLETE = "complete"
# The fourth, behind a function URL: OpenAI's webhooks (only when OpenAI is enabled).
WEBHOOK = "webhook"
# The real-time lane's worker: runs the chunks of a real-time batch from its queue.
REALTIME = "realtime"


def handler(function: str) -> str:
    """The Lambda handler string of one of the functions above."""
    return f"batchdrop.handlers.{function}.handler"


def secret_name(stack_name: str, provider: str) -> str:
    """The Secrets Manager name of a provider's API key: `batchdrop/openai-api-key` for the default stack."""
    return f"{stack_name.lower()}/{provider}-api-key"
