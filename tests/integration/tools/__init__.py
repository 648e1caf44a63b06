"""Integration tests of tool types against real servers (MCP, webhooks, SQL)."""
