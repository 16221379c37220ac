"""Each private JAX API of sharding.jax_private, used as the project uses it: a JAX upgrade that moves or
changes one fails here instead of in a run."""

import json
import logging
import subprocess
import sys

import jax

from r1jax.sharding import jax_private

# One process of a one-process cluster: the client jax.distributed.initialize starts serves what
# sharding.distributed uses (a barrier with a timeout, then the key-value store's set and directory get).
DISTRIBUTED = """
import json, socket
import jax
from r1jax.sharding.jax_private import distributed_client
before = distributed_client()
with socket.socket() as s:
    s.bind(("localhost", 0))
    port = s.getsockname()[1]
jax.distributed.initialize(f"localhost:{port}", 1, 0, initialization_timeout=60)
client = distributed_client()
client.wait_at_barrier("r1jax/probe", 10_000)
client.key_value_set("r1jax/probe/0", "digest")
print(json.dumps({"before": before is None, "kv": [list(kv) for kv in client.key_value_dir_get("r1jax/probe/")]}))
jax.distributed.shutdown()
"""


def test_the_distributed_client_serves_barriers_and_key_values(tmp_path):
    assert jax_private.distributed_client() is None  # this process never started jax.distributed
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "JAX_PLATFORMS": "cpu"}
    run = subprocess.run([sys.executable, "-c", DISTRIBUTED], capture_output=True, text=True, env=env, timeout=180)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout.splitlines()[-1]) == {"before": True, "kv": [["r1jax/probe/0", "digest"]]}


def test_the_hardware_probe_answers():
    assert jax_private.accelerators_visible() in (True, False)  # None: the probe moved or changed its calls


def test_the_backend_logger_is_the_one_jax_creates():
    jax.devices()  # starts the backend, whose module logs under this name
    assert jax_private.BACKEND_LOGGER in logging.Logger.manager.loggerDict
