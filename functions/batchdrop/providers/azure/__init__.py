"""Azure OpenAI global batch: OpenAI's line shape and API under the resource's endpoint; `body.model`
names a deployment, so no model prefix routes here (files go under inputs/azure/).

Facts: docs/providers.md ("Azure OpenAI").
"""

from __future__ import annotations

from batchdrop.providers import openai
from batchdrop.providers.spec import MB, BatchLimits, LocalEnv, Option, ProviderSpec

SPEC = ProviderSpec(
    name="azure",
    title="Azure OpenAI",
    client="batchdrop.providers.azure.client:AzureOpenAIProvider",
    realtime="batchdrop.providers.azure.realtime:AzureOpenAIRealtime",
    # OpenAI's emulator with Azure's limits and behaviours (Files and Batches under /openai/).
    emulator="batchdrop.local.emulator.openai:AzureOpenAIEmulation",
    # The OpenAI format, 100,000 requests and 200 MB per file (Azure's "Batch limits": "Max requests per
    # file: 100,000", "Max input file size: 200 MB"), not OpenAI's 50,000.
    # Azure documents no embedding-input limit for its batches: held to OpenAI's, which costs nothing
    # but a smaller batch.
    maxima=BatchLimits(max_requests=100_000, max_bytes=200 * MB, max_inputs=openai.MAX_EMBEDDING_INPUTS),
    defaults=BatchLimits(max_requests=100_000, max_bytes=190 * MB, max_inputs=openai.MAX_EMBEDDING_INPUTS),
    inputs=openai.SPEC.inputs,
    shape="openai",
    translate=openai.translate,
    model_rule=openai.SPEC.model_rule,
    asks=openai.asks,
    tokens=openai.SPEC.tokens,
    # Whether Azure keeps batch metadata is not documented clearly: creates are serialised like
    # Anthropic's and matched by time and request count (providers/azure/client.py).
    tags_batches=False,
    # Azure's global batches run until they are cancelled: BATCHDROP_AZURE_WINDOW_HOURS bounds them.
    window_hours=None,
    quota_unit="tokens",
    options=(
        Option(
            "BASE_URL",
            context="azure_endpoint",
            starts_with="https://",
            described="the Azure OpenAI resource's https:// endpoint",
            required="Azure OpenAI needs its endpoint (https://NAME.openai.azure.com)",
        ),
        # The data-plane API version (the client's default when unset).
        Option("API_VERSION", context="azure_api_version"),
    ),
    # AzureOpenAI takes the resource endpoint and adds /openai/ itself.
    local=LocalEnv(base_path=""),
)
