"""nginx configurations: the plain reverse proxy of section 1, the nginx mock upstream and proxy of
the independent-generator section, and the front of two instances in the PostgreSQL scale runs."""

import os
import re
import urllib.request
from pathlib import Path

from .common import MOCK_KEY, free_port, wait_port
from .procs import Proc


# What every nginx of the bench starts with: the process settings, then the http block opened with
# access logging off and every temporary file inside the run's directory.
HEAD = """\
{user}worker_processes {workers};
worker_rlimit_nofile 65536;
daemon off;
master_process on;
pid {dir}/{name}.pid;
error_log {dir}/{name}-error.log warn;
events {{ worker_connections 16384; }}
http {{
    access_log off;
    client_body_temp_path {dir}/nginx-body;
    proxy_temp_path {dir}/nginx-proxy;
    fastcgi_temp_path {dir}/nginx-fastcgi;
    uwsgi_temp_path {dir}/nginx-uwsgi;
    scgi_temp_path {dir}/nginx-scgi;
"""

NGINX_CONF = HEAD + """\
    keepalive_requests 1000000;
    upstream mock {{
        server 127.0.0.1:{mock_port};
        keepalive 256;
        keepalive_requests 1000000;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            proxy_pass http://mock;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Authorization "Bearer {mock_key}";
        }}
    }}
}}
"""

# An upstream that costs next to nothing: nginx answering every chat completion with the same
# bytes (the mock upstream's answer to bench/request.json), and counting the requests it served
# (`stub_status`), so that a run can tell how many calls reached the upstream.
NGINX_MOCK_CONF = HEAD + """\
    client_body_buffer_size 64k;
    keepalive_requests 1000000;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location = /_status {{
            stub_status;
        }}
        location / {{
            default_type application/json;
            return 200 '{answer}';
        }}
    }}
}}
"""


def start_nginx(ctx, upstream, name="nginx", workers=None, cpus="sut"):
    """nginx as a plain reverse proxy to `upstream` (a process with a `url`), upstream keep-alive,
    the provider key set as the mock expects it. Workers: one when pinned, else one per core."""
    port = free_port()
    mock_port = int(upstream.url.rsplit(":", 1)[1])
    conf = Path(ctx.work) / f"{name}.conf"
    conf.write_text(NGINX_CONF.format(
        user="user root;\n" if os.geteuid() == 0 else "",
        workers=workers or (1 if ctx.pin else "auto"), name=name,
        dir=ctx.work, port=port, mock_port=mock_port, mock_key=MOCK_KEY))
    p = Proc(name, ["nginx", "-c", conf, "-p", ctx.work], cpus=ctx.cpu_sut if cpus == "sut" else cpus,
             logdir=ctx.work)
    wait_port(port)
    p.url = f"http://127.0.0.1:{port}"
    return p


def start_nginx_mock(ctx, answer, name="nginx-mock", cpus=None):
    """nginx (one worker) answering every request with `answer` (bytes of JSON); `served()` on the
    returned process reads how many requests it has served, not counting that read itself."""
    text = answer.decode()
    if "$" in text or "'" in text or "\\" in text:
        raise RuntimeError("the nginx mock's answer must contain no $, ' or \\ (nginx would interpret them)")
    port = free_port()
    conf = Path(ctx.work) / f"{name}.conf"
    conf.write_text(NGINX_MOCK_CONF.format(user="user root;\n" if os.geteuid() == 0 else "", name=name,
                                           workers=1, dir=ctx.work, port=port, answer=text))
    p = Proc(name, ["nginx", "-c", conf, "-p", ctx.work], cpus=cpus, logdir=ctx.work)
    wait_port(port)
    p.url = f"http://127.0.0.1:{port}"
    p.served = lambda: nginx_requests(p.url) - 1
    return p


def nginx_requests(url):
    """The `requests` total of an nginx's stub_status (every request it has served, this one too)."""
    with urllib.request.urlopen(f"{url}/_status", timeout=10) as r:
        text = r.read().decode()
    m = re.search(r"^\s*\d+\s+\d+\s+(\d+)\s*$", text, re.M)
    if not m:
        raise RuntimeError(f"unexpected stub_status answer: {text!r}")
    return int(m.group(1))


NGINX_SCALE_CONF = HEAD + """\
    keepalive_requests 1000000;
    upstream one {{
        server {a};
        keepalive 256;
        keepalive_requests 1000000;
    }}
    upstream two {{
        server {a};
        server {b};
        keepalive 256;
        keepalive_requests 1000000;
    }}
    server {{
        listen 127.0.0.1:{port_one} backlog=4096;
        location / {{
            proxy_pass http://one;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
    server {{
        listen 127.0.0.1:{port_two} backlog=4096;
        location / {{
            proxy_pass http://two;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"""
