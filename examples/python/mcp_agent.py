"""An MCP agent using toolplane through the sidecar's MCP endpoint, with the official
Python `mcp` SDK: list the tools this agent may use, let toolplane pick one for a task,
call it, and show what a refusal looks like.

    TOOLPLANE_MCP_URL=http://127.0.0.1:50062/mcp AGENT_TOKEN=... python mcp_agent.py

Prints one JSON object (the test reads it).
"""

import asyncio
import json
import os

from mcp import ClientSession
from mcp.client.streamable_http import streamablehttp_client


async def main() -> None:
    url = os.environ.get("TOOLPLANE_MCP_URL", "http://127.0.0.1:50062/mcp")
    headers = {"authorization": f"Bearer {os.environ['AGENT_TOKEN']}"}
    async with streamablehttp_client(url, headers=headers) as (read, write, _):
        async with ClientSession(read, write) as session:
            await session.initialize()
            tools = [t.name for t in (await session.list_tools()).tools]
            picked = await session.call_tool("toolplane_select", {"task": "count the words of my essay"})
            best = picked.structuredContent["tools"][0]["tool"]
            done = await session.call_tool(best, {"text": "one two three four"})
            denied = await session.call_tool(os.environ.get("DENIED_TOOL", "forbidden_count"), {"text": "x"})
            invalid = await session.call_tool(best, {"text": 5})
            print(json.dumps({
                "tools": tools,
                "picked": best,
                "result": done.structuredContent,
                "denied": {"is_error": denied.isError, "text": denied.content[0].text},
                "invalid": {"is_error": invalid.isError, "text": invalid.content[0].text},
            }))


if __name__ == "__main__":
    asyncio.run(main())
