"""The client protocols the gateway serves every agent through, each a route class
that ``Gateway`` inherits (``GatewayCore`` gives them ``call`` and ``open_run``):

    websocket.py   WS /v1/ws/agent/{name}: the typed events, several turns a connection
    openai_api.py  POST /v1/chat/completions, GET /v1/models: agents as OpenAI models
    a2a.py         the A2A protocol (agent cards, tasks) with the a2a-sdk
    agui.py        POST /v1/agui/{name}: AG-UI events over SSE
    channels/      channel adapters (WhatsApp Cloud API)
"""
