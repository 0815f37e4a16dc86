"""`ovi-attn view`: a local, read-only web viewer over one or two capture files.

    sources.py  one open capture per file named on the command line; follows a running capture
    state.py    a request's query parameters -> a checked selection (bad ones: 400)
    compute.py  what the page draws, as arrays, through the reader and the render views
    server.py   the Starlette app and its routes; uvicorn runs it
    command.py  the Typer command
    process.py  a viewer in a child process and a small client (tests, bench/view_latency.py)
    static/     the page: our own HTML, JS and CSS (no third-party code, no network)

Needs the `view` extra (`pip install 'ovi-attn[view]'`); never imports torch.
"""
