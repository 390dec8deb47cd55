"""The upstream edge: everything between a rewritten request and the DeepSeek-side API.

session.py       the aiohttp session (pool, TLS, egress proxy) and its exceptions -> ours
client.py        UpstreamClient.open: retries, the pool's limit, error statuses (scrubbed)
response.py      UpstreamResponse: owns one answer, reads or relays it, closes it once
stream_meter.py  StreamMeter: what a relayed stream measures, told its outcome
rate_limit.py    RateLimiter: requests per second toward the upstream
keepalive.py     IdleTimer: `: ping` while a stream is silent, at event boundaries only
"""
