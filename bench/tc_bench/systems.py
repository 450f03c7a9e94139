"""The systems under test other than nginx: the mock upstream, token-console (its config, a key,
a key with a token budget and an RPM limit) and, with --litellm, LiteLLM's proxy."""

import os
import subprocess
import sys
from pathlib import Path

from .common import BENCH, LITELLM_VERSION, MOCK, MOCK_KEY, TC, free_port, http_json, log, wait_port
from .procs import Proc


def start_mock(ctx):
    p = Proc("mock-upstream", [MOCK, "--require-key", MOCK_KEY], cpus=ctx.cpu_aux,
             ready=r"listening on (http://\S+)", logdir=ctx.work)
    p.url = p.match.group(1)
    return p


def tc_env():
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("CONSOLE_", "OPENAI_", "ANTHROPIC_"))}
    env.setdefault("RUST_LOG", "info")
    return env


def start_tc(ctx, name, config_text, extra=(), wrapper=(), timeout=60, cpus="sut"):
    conf = Path(ctx.work) / f"{name}.yaml"
    conf.write_text(config_text)
    argv = list(wrapper) + [TC, "--config", conf, "--port", "0"] + list(extra)
    p = Proc(name, argv, cpus=ctx.cpu_sut if cpus == "sut" else cpus, env=tc_env(), logdir=ctx.work,
             ready=r"token-console ready gateway=(\S+) console=(\S+)", timeout=timeout)
    p.url = p.match.group(1)
    return p


def gateway_config(ctx, mock, db=None, url=None):
    return f"""host: 127.0.0.1
database_url: {url or f"sqlite://{db}"}
timezone: UTC
providers:
  - name: mock
    kind: openai
    base_url: {mock.url}/v1
    api_key: {MOCK_KEY}
    models: ["*"]
"""


# The limits of the "limited" key: a token budget and an RPM limit both checked on every call, set
# far above what a run spends or sends so that none is refused (a refusal would count as an error).
KEY_TOKEN_LIMIT = 10**12
KEY_RPM_LIMIT = 100_000_000


def create_key(tc, name="bench", limited=False):
    """A gateway key made through the console; `limited`: with a token budget and an RPM limit."""
    data = http_json(f"{tc.url}/api/console/keys", "POST", {"name": name, "description": "bench/run"})["data"]
    if limited:
        http_json(f"{tc.url}/api/console/keys/{data['id']}", "PATCH",
                  {"token_limit": KEY_TOKEN_LIMIT, "rpm_limit": KEY_RPM_LIMIT})
    return data["value"]


def key_limits():
    """What the limited key carries, for the results file."""
    return {"token_limit": KEY_TOKEN_LIMIT, "rpm_limit": KEY_RPM_LIMIT}


def start_litellm(ctx, mock):
    venv = BENCH / ".venv-litellm"
    exe = venv / "bin" / "litellm"
    if not exe.exists():
        log(f"installing LiteLLM {LITELLM_VERSION} into {venv} …")
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", f"litellm[proxy]=={LITELLM_VERSION}"],
                       check=True)
    port = free_port()
    conf = Path(ctx.work) / "litellm.yaml"
    conf.write_text(f"""model_list:
  - model_name: gpt-4o-mini
    litellm_params:
      model: openai/gpt-4o-mini
      api_base: {mock.url}/v1
      api_key: {MOCK_KEY}
litellm_settings:
  telemetry: false
""")
    env = dict(os.environ, LITELLM_LOCAL_MODEL_COST_MAP="True", LITELLM_TELEMETRY="False",
               LITELLM_LOG="ERROR", DISABLE_ADMIN_UI="True")
    p = Proc("litellm", [exe, "--config", conf, "--host", "127.0.0.1", "--port", port,
                         "--num_workers", "1"], cpus=ctx.cpu_sut, env=env, logdir=ctx.work)
    wait_port(port, timeout=180)
    p.url = f"http://127.0.0.1:{port}"
    return p
