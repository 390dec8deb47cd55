"""Sight beyond CLIP: vision models asked over HTTP for a description, and images passed
through to upstreams that can see for themselves.

spec.py         DescriberSpec: one entry of CLIP_PROXY_DESCRIBERS (a JSON list)
prompt.py       the describer's prompt: a template with {question} and {ocr}
describer.py    Describer: one OpenAI-compatible vision endpoint, over the upstream edge
chain.py        DescriberChain: describers in order, each failing one cooled down
passthrough.py  an image re-encoded for an upstream that sees: upright, bounded, no metadata
bridge.py       VisionBridge: what the chat service asks for each image (cache in front)
"""
