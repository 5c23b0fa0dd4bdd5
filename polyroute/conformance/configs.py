"""Gateway configs that point at the suite's upstreams: polyroute's, and LiteLLM proxy's.

Each fault has its own entry (so one fault's failures never set another's entry aside)
and its own model name; the backup serves every fault after it, the way each gateway
is told so: a second entry of the same model in polyroute, a ``fallbacks`` router
setting to a backup model in LiteLLM.
"""

from __future__ import annotations

from polyroute.conformance.faults import FAULTS, Ports, model_name

STALL_TIMEOUT_S = 2
"""How long the gateway waits for a first chunk, or for the next one, in these configs:
the stall faults last that long."""


def polyroute_config(ports: Ports, prefix: str) -> str:
    """A ready ``polyroute serve`` config, as YAML with comments."""
    lines = [
        f"# polyroute conformance config --upstreams-port {ports.faults}",
        f"# The suite's upstreams: one path per fault on {ports.faults}, the backup on "
        f"{ports.backup},",
        f"# nothing on {ports.refused} (connection refused).",
        "retry: {attempts: 1}       # a fault upstream fails every time: go on to the backup",
        "cooldown: {seconds: 0}     # and is never set aside, so every run reaches each fault",
        f"timeouts: {{first_chunk: {STALL_TIMEOUT_S}, idle: {STALL_TIMEOUT_S}}}"
        "   # the stall faults end after these",
        "tool_calls: atomic         # a tool call cut halfway is retried whole, never spliced",
        "providers:",
    ]
    for fault in FAULTS:
        lines += [
            f"  - name: {fault.name}",
            "    type: openai",
            f"    base_url: {ports.base_url(fault.name)}",
            f"    models: [{model_name(prefix, fault.name)}]",
        ]
    lines += [
        "  - name: backup             # after the fault's entry, for every fault's model",
        "    type: openai",
        f"    base_url: {ports.backup_url}",
        "    priority: 1",
        "    models:",
        *(f"      - {model_name(prefix, fault.name)}" for fault in FAULTS),
    ]
    return "\n".join(lines) + "\n"


def litellm_config(ports: Ports, prefix: str) -> str:
    """A LiteLLM proxy config for the same upstreams (``litellm --config FILE``)."""
    backup = f"{prefix}-backup"
    lines = [
        f"# polyroute conformance config --for litellm --upstreams-port {ports.faults}",
        "model_list:",
    ]
    for name, base_url in [
        *((model_name(prefix, fault.name), ports.base_url(fault.name)) for fault in FAULTS),
        (backup, ports.backup_url),
    ]:
        lines += [
            f"  - model_name: {name}",
            "    litellm_params:",
            f"      model: openai/{name}",
            f"      api_base: {base_url}",
            "      api_key: unused",
            f"      stream_timeout: {STALL_TIMEOUT_S}",
        ]
    lines += [
        "router_settings:",
        "  num_retries: 0             # as polyroute's config: go on to the backup at once",
        "  fallbacks:",
        *(f"    - {model_name(prefix, fault.name)}: [{backup}]" for fault in FAULTS),
    ]
    return "\n".join(lines) + "\n"


CONFIGS = {"polyroute": polyroute_config, "litellm": litellm_config}
