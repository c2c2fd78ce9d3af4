"""An MCP agent that signs in the MCP way: it connects without a token, follows the
401 to the sidecar's protected-resource metadata, gets an access token from the
organisation's identity provider by client credentials, then lists and calls tools.
Works with the official Python SDK 1.x (initialize handshake, 2025-11-25) and 2.x
(stateless 2026-07-28 when the server offers it).

    TOOLPLANE_MCP_URL=http://127.0.0.1:50062/mcp OAUTH_ISSUER=https://idp.example \
    OAUTH_CLIENT_ID=... OAUTH_CLIENT_SECRET=... python mcp_oauth_agent.py

Prints one JSON object (the test reads it): the negotiated protocol version, the
HTTP exchanges (method, status, path), the tools, and a call's result.
"""

import asyncio
import inspect
import json
import os

import mcp
from mcp.client.auth import TokenStorage
from mcp.client.auth.extensions.client_credentials import ClientCredentialsOAuthProvider
from mcp.client.streamable_http import streamable_http_client

try:  # SDK 2.x ships its own fork of httpx
    import httpx2 as httpx
except ImportError:
    import httpx


class MemoryStorage(TokenStorage):
    def __init__(self):
        self.tokens = None
        self.client = None

    async def get_tokens(self):
        return self.tokens

    async def set_tokens(self, tokens):
        self.tokens = tokens

    async def get_client_info(self):
        return self.client

    async def set_client_info(self, client_info):
        self.client = client_info


def provider(url: str) -> ClientCredentialsOAuthProvider:
    kwargs = dict(
        server_url=url,
        storage=MemoryStorage(),
        client_id=os.environ["OAUTH_CLIENT_ID"],
        client_secret=os.environ["OAUTH_CLIENT_SECRET"],
        issuer=os.environ["OAUTH_ISSUER"],
    )
    params = inspect.signature(ClientCredentialsOAuthProvider.__init__).parameters
    kwargs["scope" if "scope" in params else "scopes"] = "tools"
    return ClientCredentialsOAuthProvider(**kwargs)


def result_json(r) -> dict:
    structured = getattr(r, "structured_content", None)
    if structured is None:
        structured = getattr(r, "structuredContent", None)
    is_error = getattr(r, "is_error", None)
    if is_error is None:
        is_error = getattr(r, "isError", False)
    text = r.content[0].text if r.content else ""
    return {"structured": structured, "is_error": bool(is_error), "text": text}


async def main() -> None:
    url = os.environ["TOOLPLANE_MCP_URL"]
    tool = os.environ.get("TOOL", "word_count")
    args = json.loads(os.environ.get("TOOL_ARGS", '{"text": "one two three four"}'))
    exchanges = []

    async def on_response(response):
        exchanges.append(f"{response.request.method} {response.status_code} {response.request.url.path}")

    async with httpx.AsyncClient(auth=provider(url), event_hooks={"response": [on_response]}, timeout=30) as http:
        transport = streamable_http_client(url, http_client=http)
        if hasattr(mcp, "Client"):  # 2.x: negotiates, preferring the stateless revision
            async with mcp.Client(transport) as client:
                version = client.protocol_version
                tools = [t.name for t in (await client.list_tools()).tools]
                done = result_json(await client.call_tool(tool, args))
        else:
            async with transport as (read, write, _):
                async with mcp.ClientSession(read, write) as session:
                    version = (await session.initialize()).protocolVersion
                    tools = [t.name for t in (await session.list_tools()).tools]
                    done = result_json(await session.call_tool(tool, args))
    print(json.dumps({"sdk": getattr(mcp, "__version__", ""), "protocol_version": version,
                      "exchanges": exchanges, "tools": tools, "result": done}))


if __name__ == "__main__":
    asyncio.run(main())
