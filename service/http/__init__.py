"""The viewer's HTTP side, one job per module: `connect` (the Connect protocol: codes, envelopes,
codecs), `guard` (which requests a local server answers: Host, Origin, token), `static` (the
viewer's files), `app` (the aiohttp application that forwards calls to the gRPC server).

Only `app` imports aiohttp; `attnscope.service.gateway.Gateway` imports it when it is built, so
`import attnscope`, the gRPC server and the benchmarks work where aiohttp is not installed.
"""
