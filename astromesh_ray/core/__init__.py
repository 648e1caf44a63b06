"""The agent engine in plain asyncio. Never imports ray (a test enforces it)."""
