"""The HTTP API through gradio_client, as a script would use it (README: "HTTP API").

The demo runs in this process on a free port, so the tests can compare what
the API reports with the session's live model, and read what the server
wrote to its log: after the bad-input tests no line may hold "Traceback".
"""
import json
import os

import pytest
import torch
from safetensors.torch import load_file

from core import checkpoint as M
from tests.ui._browser import ServerLog, launch
from ui import state as S

pytestmark = pytest.mark.slow

TA = {"merge_method": "task_arithmetic", "base_model": "zoo:base",
      "models": [{"model": "zoo:safety", "task": "safety", "parameters": {"weight": 1.0}},
                 {"model": "zoo:math", "task": "math", "parameters": {"weight": 1.0}}],
      "parameters": {"lambda": 0.5}}
SLERP_YAML = """merge_method: slerp
base_model: zoo:base
models:
- model: zoo:math
  task: math
parameters:
  t: 0.3
"""


@pytest.fixture(scope="module")
def server():
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ["NO_PROXY"] = "127.0.0.1,localhost"
    from ui.app import build_demo, launch_options
    log = ServerLog()
    demo = build_demo()
    url = launch(demo, **launch_options())
    yield url, log
    demo.close()
    log.close()


@pytest.fixture()
def client(server):
    from gradio_client import Client
    return Client(server[0], verbose=False)


def weights(ref: str) -> dict:
    return load_file(os.path.join(M.resolve(ref), "model.safetensors"))


def refused(client, match: str, **kw):
    from gradio_client.exceptions import AppError
    with pytest.raises(AppError) as err:
        client.predict(**kw)
    assert match in str(err.value), str(err.value)
    return str(err.value)


def test_the_api_lists_three_named_endpoints(client):
    info = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert set(info) == {"/merge", "/chat", "/probe"}
    assert [p["parameter_name"] for p in info["/probe"]["parameters"]] == ["suites", "limit", "model"]


def test_merge_uses_the_recipes_values_not_another_methods_ranges(client):
    out = client.predict(recipe=json.dumps(TA), api_name="/merge")
    assert out["method"] == "task_arithmetic" and out["tensors"] == 39 and out["seconds"] > 0
    sess = S.SESSIONS[client.session_hash]
    b, s, m = weights("zoo:base"), weights("zoo:safety"), weights("zoo:math")
    name = "model.layers.0.mlp.up_proj.weight"
    want = b[name] + 0.5 * ((s[name] - b[name]) + (m[name] - b[name]))       # λ 0.5, not 1
    torch.testing.assert_close(sess.model.state_dict()[name], want, rtol=1e-5, atol=1e-6)
    out = client.predict(recipe=SLERP_YAML, api_name="/merge")                  # YAML works too
    assert out["method"] == "slerp" and sess.merged_recipe["parameters"]["t"] == 0.3
    assert "t: 0.3" in out["recipe"]


def test_acm_merges_through_the_api(client):
    acm = {"merge_method": "acm", "base_model": "zoo:base",
           "models": [{"model": "zoo:safety", "task": "safety"}, {"model": "zoo:math", "task": "math"}],
           "parameters": {"temperature": 0.5, "n_calibration": 8, "clusters": 2}}
    out = client.predict(recipe=json.dumps(acm), api_name="/merge")
    assert out["method"] == "acm" and S.SESSIONS[client.session_hash].merged_recipe["parameters"]["temperature"] == 0.5


def test_chat_and_probe_answer_for_the_merge_of_the_session(client):
    refused(client, "Merge first", prompt="hi", api_name="/chat")
    client.predict(recipe=json.dumps(TA), api_name="/merge")
    out = client.predict(prompt="What is 47 + 8?", max_new_tokens=16, api_name="/chat")
    assert list(out["answers"]) == ["merged", "safety", "math"]      # not "safety (safety)"
    assert set(out["verdicts"].values()) <= {"correct", "wrong", "refused"}
    res = client.predict(suites="harmful,math", limit=4, api_name="/probe")
    assert res["model"] == "merged" and set(res["suites"]) == {"harmful", "math"}
    assert res["suites"]["math"]["n"] == 4 and 0.0 <= res["suites"]["math"]["accuracy"] <= 1.0
    res = client.predict(suites="harmful", limit=4, model="zoo:safety", api_name="/probe")
    assert res["model"] == "zoo:safety" and res["suites"]["harmful"]["n"] == 4


def test_bad_values_get_one_sentence_never_a_clamp(client):
    big = json.loads(json.dumps(TA))
    big["models"][0]["parameters"]["weight"] = 1e9
    refused(client, "weight", recipe=json.dumps(big), api_name="/merge")
    assert client.session_hash not in S.SESSIONS or S.SESSIONS[client.session_hash].merged_recipe is None
    odd = json.loads(json.dumps(TA))
    odd["parameters"]["strength"] = 2
    refused(client, "'strength' in parameters is not a parameter of task_arithmetic", recipe=json.dumps(odd),
            api_name="/merge")
    refused(client, "Unknown merge method", recipe='{"merge_method": "nope", "models": ["zoo:math"]}',
            api_name="/merge")
    refused(client, "not valid YAML", recipe="merge_method: [ties", api_name="/merge")
    refused(client, "recipe must be non-empty text", recipe="", api_name="/merge")
    refused(client, "recipe must be non-empty text", recipe=42, api_name="/merge")
    client.predict(recipe=json.dumps(TA), api_name="/merge")
    refused(client, "max_new_tokens must be between 1 and 512; got 0", prompt="hi", max_new_tokens=0,
            api_name="/chat")
    refused(client, "max_new_tokens must be a whole number", prompt="hi", max_new_tokens="many", api_name="/chat")
    refused(client, "max_new_tokens must be between 1 and 512; got 1000000000", prompt="hi",
            max_new_tokens=1e9, api_name="/chat")
    refused(client, "prompt is 200,000 characters long", prompt="x" * 200_000, api_name="/chat")
    refused(client, "limit must be between 1 and 1000; got -1", limit=-1, api_name="/probe")
    refused(client, "Unknown probe suite", suites="nope", limit=4, api_name="/probe")


def test_space_mode_refuses_every_path_a_request_names(client, monkeypatch, tmp_path):
    monkeypatch.setenv("MERGE_EXPLORER_SPACE", "1")
    secret = tmp_path / "secret.jsonl"
    secret.write_text('{"prompt": "the server\'s secret"}\n')
    msg = refused(client, "outside the folders this Space may read", suites=f"harmful={secret}", limit=4,
                  model="zoo:safety", api_name="/probe")
    assert "secret\\'s" not in msg and "the server" not in msg
    refused(client, "outside the folders this Space may read", suites="harmful", limit=4, model=str(tmp_path),
            api_name="/probe")
    led = {"merge_method": "led", "base_model": "zoo:base",
           "models": [{"model": "zoo:safety", "task": "safety", "parameters": {"location_data": str(secret)}},
                      {"model": "zoo:math", "task": "math"}]}
    refused(client, "outside the folders this Space may read", recipe=json.dumps(led), api_name="/merge")
    acm = {"merge_method": "acm", "base_model": "zoo:base", "parameters": {"calibration": str(secret)},
           "models": [{"model": "zoo:safety", "task": "safety"}, {"model": "zoo:math", "task": "math"}]}
    refused(client, "outside the folders this Space may read", recipe=json.dumps(acm), api_name="/merge")
    outside = dict(TA, base_model=str(tmp_path))
    refused(client, "outside the folders this Space may read", recipe=json.dumps(outside), api_name="/merge")


def test_no_traceback_in_the_server_log(server, client):
    """Runs last in this file: everything above, bad values included, left no traceback behind."""
    from gradio_client.exceptions import AppError
    with pytest.raises(AppError):
        client.predict(recipe="merge_method: [", api_name="/merge")
    assert "Traceback" not in server[1].text(), server[1].text()[-3000:]
