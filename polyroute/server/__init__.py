"""The gateway (``polyroute serve``): OpenAI's chat-completions API in front of a router.
The top floor: it imports the router, and nothing imports it."""

from polyroute.server.app import Gateway
from polyroute.server.run import serve

__all__ = ["Gateway", "serve"]
