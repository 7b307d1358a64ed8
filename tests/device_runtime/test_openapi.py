"""GET /openapi.json: a valid OpenAPI 3.1 document of every public route, served by a real process
that cannot import PyYAML (issue 14: the route answered 500 without it)."""
from __future__ import annotations

import os
import re
import subprocess
import sys

import httpx
import pytest
from openapi_schema_validator import OAS31Validator
from openapi_spec_validator import OpenAPIV31SpecValidator
from starlette.routing import Route

from edgeai_runtime.device.config import load_config
from edgeai_runtime.format.manifest import Manifest
from edgeai_runtime.service import openapi
from edgeai_runtime.service.app import create_app
from support.digits_store import ONNX_INPUTS, ONNX_OUTPUTS, serving_store
from support.service import start_service, write_config

#: Put first on the service's PYTHONPATH: site imports it at start-up, before anything else runs.
NO_YAML = '''import sys

class _RefuseYaml:
    def find_spec(self, name, path=None, target=None):
        if name == "yaml" or name.startswith("yaml.") or name == "_yaml":
            raise ModuleNotFoundError("PyYAML is blocked in this process (test_openapi)", name=name)
        return None

sys.meta_path.insert(0, _RefuseYaml())
'''


@pytest.fixture(scope="module")
def no_yaml_env(tmp_path_factory):
    site = tmp_path_factory.mktemp("no-yaml")
    (site / "sitecustomize.py").write_text(NO_YAML)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(site)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    return env


@pytest.fixture(scope="module")
def client(tmp_path_factory, digits, no_yaml_env):
    root = tmp_path_factory.mktemp("device")
    serving_store(root, digits, ("1.0.0", "2.0.0"))
    write_config(root)
    proc, base = start_service(root, env=no_yaml_env)
    with httpx.Client(base_url=base, timeout=30) as http:
        yield http
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def doc(client):
    reply = client.get("/openapi.json")
    assert reply.status_code == 200, reply.text
    assert reply.headers["content-type"] == "application/json"
    return reply.json()


def conforms(doc, schema_name, instance):
    """Validate ``instance`` against components/schemas/<schema_name> of ``doc`` (refs resolved in doc)."""
    schema = dict(doc["components"]["schemas"][schema_name], components=doc["components"])
    OAS31Validator(schema).validate(instance)


def test_the_service_process_really_has_no_yaml(no_yaml_env):
    """The environment the service runs in refuses PyYAML, so Starlette's docstring parser would have failed."""
    probe = subprocess.run([sys.executable, "-c", "import starlette.schemas as s; print(s.yaml is None)\nimport yaml"],
                           env=no_yaml_env, capture_output=True, text=True, timeout=60, check=False)
    assert probe.stdout.strip() == "True"
    assert probe.returncode == 1 and "PyYAML is blocked" in probe.stderr


def test_document_is_valid_openapi_3_1(doc):
    assert doc["openapi"] == "3.1.0"
    OpenAPIV31SpecValidator(doc).validate()
    assert "/v2/admin/" in doc["info"]["description"] and "loopback" in doc["info"]["description"]


def test_document_without_models_and_with_a_token_is_valid_too():
    bare = openapi.document("0.0.0", [], token_required=True)
    OpenAPIV31SpecValidator(bare).validate()
    name = bare["paths"]["/v2/models/{name}/infer"]["parameters"][0]
    assert name["schema"] == {"type": "string", "pattern": openapi.NAME_PATTERN}
    body = bare["paths"]["/v2/models/{name}/infer"]["post"]["requestBody"]["content"]["application/json"]
    assert "examples" not in body and body["schema"] == {"$ref": "#/components/schemas/InferenceRequest"}
    assert bare["security"] == [{"bearer": []}]
    assert bare["paths"]["/v2/health/live"]["get"]["security"] == []
    assert "401" in bare["paths"]["/v2"]["get"]["responses"]
    open_doc = openapi.document("0.0.0", [])
    assert {} in open_doc["security"], "without a configured token, the bearer scheme is optional"


def test_every_public_route_is_described_with_its_methods(doc, tmp_path):
    app = create_app(load_config(str(tmp_path)))
    routes = [r for r in app.routes if isinstance(r, Route)]
    public = [r for r in routes if not r.path.startswith("/v2/admin/")]
    assert len(public) == 12 and len(routes) > len(public)
    for route in public:
        assert route.path in doc["paths"], route.path
        described = {k.upper() for k in doc["paths"][route.path] if k != "parameters"}
        assert described == route.methods - {"HEAD"}, route.path  # Starlette adds HEAD to every GET
    assert not [p for p in doc["paths"] if p.startswith("/v2/admin")]
    assert set(doc["paths"]) == {r.path for r in public}


def test_path_parameters_are_declared(doc):
    templated = 0
    for path, item in doc["paths"].items():
        in_path = set(re.findall(r"{(\w+)}", path))
        declared = [p for p in item.get("parameters", []) if p["in"] == "path"]
        for op in (v for k, v in item.items() if k != "parameters"):
            declared += [p for p in op.get("parameters", []) if p["in"] == "path"]
        assert {p["name"] for p in declared} == in_path, path
        assert all(p["required"] is True for p in declared), path
        templated += bool(in_path)
        for param in declared:
            if param["name"] == "name":
                assert param["schema"]["enum"] == ["digits"], "the served models are the name's values"
            if param["name"] == "version":
                assert re.match(param["schema"]["pattern"], "1.0.0") and not re.match(param["schema"]["pattern"], "..")
    assert templated == 6


def test_each_served_model_has_an_example_the_model_answers(doc, client):
    body = doc["paths"]["/v2/models/{name}/infer"]["post"]["requestBody"]
    assert body["required"] is True
    examples = body["content"]["application/json"]["examples"]
    assert set(examples) == {"digits"}
    example = examples["digits"]["value"]
    conforms(doc, "InferenceRequest", example)
    assert example["inputs"] == [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0.0] * 64}]
    for path in ("/v2/models/digits/infer", "/v2/models/digits/versions/1.0.0/infer"):
        reply = client.post(path, json=example)
        assert reply.status_code == 200, reply.text
        conforms(doc, "InferenceResponse", reply.json())
        assert [o["name"] for o in reply.json()["outputs"]] == ["label", "probabilities"]


def test_live_responses_conform_to_their_schemas(doc, client):
    for path, schema in (("/v2/health/live", "Live"), ("/v2/health/ready", "Ready"), ("/v2", "ServerMetadata"),
                         ("/v2/models/digits", "ModelMetadata"), ("/v2/models/digits/ready", "ModelReady")):
        conforms(doc, schema, client.get(path).json())
    missing = client.get("/v2/models/nope")
    assert missing.status_code == 404
    conforms(doc, "Error", missing.json())
    bad = client.post("/v2/models/digits/infer", json={"inputs": []})
    assert bad.status_code == 400
    conforms(doc, "Error", bad.json())
    with pytest.raises(Exception):
        conforms(doc, "InferenceRequest", {"inputs": []})  # the schema refuses what the service refuses


def test_example_request_covers_datatypes_and_free_dimensions():
    manifest = Manifest.for_model(
        "m", "1", "onnxruntime", "fp32", b"model",
        inputs=ONNX_INPUTS + [{"name": "mask", "datatype": "BOOL", "shape": [-1, 2, 3]},
                              {"name": "ids", "datatype": "INT64", "shape": [4]}],
        outputs=ONNX_OUTPUTS)
    body = openapi.example_request(manifest)
    assert body["inputs"][1] == {"name": "mask", "shape": [1, 2, 3], "datatype": "BOOL", "data": [False] * 6}
    assert body["inputs"][2] == {"name": "ids", "shape": [4], "datatype": "INT64", "data": [0, 0, 0, 0]}
    assert all(isinstance(v, float) and not isinstance(v, bool) for v in body["inputs"][0]["data"])


def test_each_served_model_has_a_body_schema_the_fuzzer_can_fill(doc):
    specific = doc["components"]["schemas"]["digits.InferenceRequest"]
    body = doc["paths"]["/v2/models/{name}/infer"]["post"]["requestBody"]["content"]["application/json"]
    assert {"$ref": "#/components/schemas/digits.InferenceRequest"} in body["schema"]["anyOf"]
    conforms(doc, "digits.InferenceRequest", body["examples"]["digits"]["value"])
    tensor = specific["properties"]["inputs"]["prefixItems"][0]["properties"]
    assert tensor["shape"] == {"const": [1, 64]} and tensor["data"]["minItems"] == tensor["data"]["maxItems"] == 64
    assert tensor["data"]["items"]["maximum"] == pytest.approx(3.4028234663852886e38), "finite FP32 values only"
    with pytest.raises(Exception):  # a value FP32 cannot hold is not in the model's body schema
        conforms(doc, "digits.InferenceRequest", {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32",
                                                              "data": [1e39] * 64}]})


def test_a_model_with_large_inputs_gets_an_example_but_no_body_schema():
    big = Manifest.for_model("images", "1", "onnxruntime", "fp32", b"model", outputs=ONNX_OUTPUTS,
                             inputs=[{"name": "pixels", "datatype": "UINT8", "shape": [-1, 3, 224, 224]}])
    assert openapi.model_request_schema(big) is None
    built = openapi.document("0.0.0", [big])
    OpenAPIV31SpecValidator(built).validate()
    body = built["paths"]["/v2/models/{name}/infer"]["post"]["requestBody"]["content"]["application/json"]
    assert body["schema"] == {"$ref": "#/components/schemas/InferenceRequest"}
    assert len(body["examples"]["images"]["value"]["inputs"][0]["data"]) == 3 * 224 * 224


def test_the_document_follows_a_blue_green_switch(doc, client):
    """Last in this module: it switches the served version. The document is cached until the serving versions change."""
    assert client.get("/openapi.json").content == client.get("/openapi.json").content
    assert "digits 1.0.0" in doc["info"]["description"]
    switched = client.post("/v2/admin/models/digits/activate", json={"version": "2.0.0"})
    assert switched.status_code == 200, switched.text
    after = client.get("/openapi.json").json()
    assert "digits 2.0.0" in after["info"]["description"]
    version = after["paths"]["/v2/models/{name}/versions/{version}/infer"]["parameters"][1]
    assert version["example"] == "2.0.0"
    OpenAPIV31SpecValidator(after).validate()
