"""Push to and pull from a Hub served on 127.0.0.1 (tests/hub_server.py), with the real client.

`HF_ENDPOINT` is read when `huggingface_hub` is imported, so the push and each pull run in a fresh
process pointed at the server, which runs in a thread of the test process.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from hub_server import HubServer
from safetensors.torch import load

from ltap_hf.models.sparse_safetensors import SPARSE_WEIGHTS_NAME


REPO = "user/lt-resnet20-pruned"

PUSH = """
import json, sys
import numpy as np, torch
from ltap_hf import model_cost
from ltap_hf.hub import PruningReport, push_pruned_to_hub, render_model_card
from ltap_hf.metrics import long_tail_accuracy
from ltap_hf.models import LTResNetConfig, LTResNetForImageClassification
from ltap_hf.models.image_processing import make_image_processor
from ltap_hf.pruning import apply_masks, density_report, full_masks, prunable_parameters, select_mask

out, repo = sys.argv[1], sys.argv[2]
torch.manual_seed(0)
names = [f"class{i}" for i in range(10)]
model = LTResNetForImageClassification(LTResNetConfig.from_preset("resnet20", id2label=dict(enumerate(names)))).train()
model(torch.randn(4, 3, 16, 16))
model.eval()
parameters = prunable_parameters(model)
masks = select_mask({n: p.detach().abs() for n, p in parameters.items()}, full_masks(parameters), 0.3, 0.0)
apply_masks(parameters, masks)
counts = [500, 300, 150, 90, 60, 40, 25, 15, 8, 5]
rng = np.random.default_rng(0)
labels = np.repeat(np.arange(10), 20)
report = PruningReport(
    model_name="lt-resnet20-pruned", architecture="a CIFAR ResNet-20", model_type="lt_resnet",
    dataset_id="tomas-gajarsky/cifar10-lt", dataset_name="CIFAR-10-LT", class_names=names, train_class_counts=counts,
    pruned_accuracy=long_tail_accuracy(np.where(rng.random(200) < 0.7, labels, 0), labels, counts),
    density=density_report(model, masks), cost=model_cost(model, (3, 32, 32)),
    ltap_settings={"target_density": 0.3}, final_alpha={"magnitude": 0.6, "taylor1": 0.4},
)
card, plots = render_model_card(report, out + "/card", repo_id=repo)
pixels = torch.randn(3, 3, 32, 32)
np.save(out + "/pixels.npy", pixels.numpy())
first = push_pruned_to_hub(model, repo, make_image_processor(32, [0.5] * 3, [0.25] * 3), card=card, plots=plots)
np.save(out + "/logits_first.npy", model(pixels).logits.detach().numpy())
with torch.no_grad():
    model.classifier.weight.mul_(-1)
model.push_to_hub(repo)  # a second commit, through transformers' own push
np.save(out + "/logits_second.npy", model(pixels).logits.detach().numpy())
json.dump({"first_commit": first.oid}, open(out + "/commits.json", "w"))
print("pushed")
"""

PULL = """
import json, sys
{hide_ltap_hf}
import numpy as np, torch
from transformers import AutoModelForImageClassification

out, repo, kwargs = sys.argv[1], sys.argv[2], {load_kwargs}
pixels = torch.from_numpy(np.load(out + "/pixels.npy"))
model = AutoModelForImageClassification.from_pretrained(repo, **kwargs)
print(type(model).__module__)
assert np.array_equal(model(pixels).logits.detach().numpy(), np.load(out + "/logits_second.npy"))
first = json.load(open(out + "/commits.json"))["first_commit"]
model = AutoModelForImageClassification.from_pretrained(repo, revision=first, **kwargs)
assert np.array_equal(model(pixels).logits.detach().numpy(), np.load(out + "/logits_first.npy"))
print("pulled")
"""


@pytest.fixture(scope="module")
def hub_server():
    with HubServer() as server:
        yield server


def _run(script: str, hub_server: HubServer, tmp_path, hf_home: str, repo: str = REPO) -> subprocess.CompletedProcess:
    env = {
        "HF_ENDPOINT": hub_server.url,
        "HF_HOME": str(tmp_path / hf_home),
        "HF_TOKEN": "hf_test_token",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "MPLCONFIGDIR": str(tmp_path / "matplotlib"),
        "PATH": "/usr/bin:/bin",
    }
    result = subprocess.run([sys.executable, "-c", script, str(tmp_path), repo], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr[-4000:]
    return result


def test_push_then_pull_in_fresh_processes_gives_identical_outputs(hub_server, tmp_path):
    assert "pushed" in _run(PUSH, hub_server, tmp_path, "hf-push").stdout

    first = json.loads((tmp_path / "commits.json").read_text())["first_commit"]
    published = hub_server.files(REPO, first)
    for name in ("README.md", "per_class_accuracy.png", "layer_density.png", "preprocessor_config.json",
                 "modeling_lt_resnet.py", "sparse_safetensors.py"):
        assert name in published, sorted(published)
    assert published["README.md"] == (tmp_path / "card" / "README.md").read_bytes()
    for files in (published, hub_server.files(REPO)):  # both pushes published the sparse format only
        assert "model.safetensors" not in files
        assert json.loads(files["config.json"])["sparse_format"]["format"] == "sparse-bitmask"
        assert any(key.endswith(".bitmask") for key in load(files[SPARSE_WEIGHTS_NAME]))

    # with ltap_hf installed, its registered class loads the repo
    pulled = _run(PULL.format(hide_ltap_hf="import ltap_hf", load_kwargs="{}"), hub_server, tmp_path, "hf-pull-local")
    assert pulled.stdout.startswith("ltap_hf.models.modeling_lt_resnet") and "pulled" in pulled.stdout
    # without it, the code published in the repo loads it
    pulled = _run(
        PULL.format(hide_ltap_hf='sys.modules["ltap_hf"] = None', load_kwargs='{"trust_remote_code": True}'),
        hub_server, tmp_path, "hf-pull-remote",
    )
    assert pulled.stdout.startswith("transformers_modules") and "pulled" in pulled.stdout


TRAIN_AND_PUSH = """
import sys
sys.path.insert(0, {recipes!r})
import numpy as np, torch
import run_ltap

out, repo = sys.argv[1], sys.argv[2]
run_ltap.main(["--output_dir", out + "/run", "--dataset_cache_dir", out + "/data", "--num_train_epochs", "2",
               "--lr_milestones", "1", "2", "--disable_tqdm", "true", "--push_to_hub", "true", "--hub_model_id", repo])
from transformers import AutoModelForImageClassification
model = AutoModelForImageClassification.from_pretrained(out + "/run").eval()
pixels = torch.randn(3, 3, 8, 8)
np.save(out + "/pixels.npy", pixels.numpy())
np.save(out + "/logits.npy", model(pixels).logits.detach().numpy())
print("trained-and-pushed")
"""

PULL_TRAINED = """
import sys
sys.modules["ltap_hf"] = None
import numpy as np, torch
from transformers import AutoModelForImageClassification
out, repo = sys.argv[1], sys.argv[2]
model = AutoModelForImageClassification.from_pretrained(repo, trust_remote_code=True).eval()
assert np.array_equal(model(torch.from_numpy(np.load(out + "/pixels.npy"))).logits.detach().numpy(), np.load(out + "/logits.npy"))
print("pulled")
"""


def test_trainer_push_to_hub_publishes_sparse_model_card_and_plots(hub_server, tmp_path):
    recipes = str(Path(__file__).resolve().parents[1] / "recipes")
    repo = "user/digits-lt-ltap"
    result = _run(TRAIN_AND_PUSH.format(recipes=recipes), hub_server, tmp_path, "hf-train", repo=repo)
    assert "trained-and-pushed" in result.stdout
    published = hub_server.files(repo)
    for name in (SPARSE_WEIGHTS_NAME, "config.json", "preprocessor_config.json", "README.md", "per_class_accuracy.png",
                 "layer_density.png"):
        assert name in published, sorted(published)
    assert "model.safetensors" not in published
    assert b"model-index" in published["README.md"] and b"LTAP" in published["README.md"]
    assert "pulled" in _run(PULL_TRAINED, hub_server, tmp_path, "hf-pull-trained", repo=repo).stdout


PUSH_FOREIGN = """
import json, sys
import numpy as np, torch
from PIL import Image
from transformers import ResNetConfig, ResNetForImageClassification
from ltap_hf.hub import push_pruned_to_hub
from ltap_hf.models.image_processing import make_image_processor
from ltap_hf.pruning import apply_masks, full_masks, prunable_parameters, select_mask

out, repo = sys.argv[1], sys.argv[2]
torch.manual_seed(0)
config = ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic",
                      id2label={0: "cat", 1: "dog", 2: "bird"}, label2id={"cat": 0, "dog": 1, "bird": 2})
model = ResNetForImageClassification(config).eval()
parameters = prunable_parameters(model)
apply_masks(parameters, select_mask({n: p.detach().abs() for n, p in parameters.items()}, full_masks(parameters), 0.3, 0.0))
processor = make_image_processor(32, [0.5] * 3, [0.25] * 3)
image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8))
image.save(out + "/image.png")
with torch.no_grad():
    probabilities = model(**processor(image, return_tensors="pt")).logits.softmax(-1)[0]
json.dump({config.id2label[i]: float(p) for i, p in enumerate(probabilities)}, open(out + "/expected.json", "w"))
push_pruned_to_hub(model, repo, processor)
print("pushed")
"""

PIPELINE_WITHOUT_LTAP_HF = """
import json, sys
sys.modules["ltap_hf"] = None
from PIL import Image
from transformers import pipeline
out, repo = sys.argv[1], sys.argv[2]
classifier = pipeline("image-classification", model=repo, trust_remote_code=True)
scores = {p["label"]: p["score"] for p in classifier(Image.open(out + "/image.png"))}
expected = json.load(open(out + "/expected.json"))
assert scores.keys() == expected.keys() and all(abs(scores[k] - expected[k]) < 1e-5 for k in scores), (scores, expected)
print(type(classifier.model).__name__, "classified")
"""


def test_a_weight_pruned_transformers_backbone_runs_in_a_pipeline_from_the_hub(hub_server, tmp_path):
    repo = "user/pruned-resnet-foreign"
    assert "pushed" in _run(PUSH_FOREIGN, hub_server, tmp_path, "hf-push-foreign", repo).stdout
    published = hub_server.files(repo)
    assert "model.safetensors" not in published and SPARSE_WEIGHTS_NAME in published
    assert json.loads(published["config.json"])["auto_map"] == {
        "AutoModelForImageClassification": "modeling_ltap_sparse.LTAPSparseResNetForImageClassification"
    }
    pulled = _run(PIPELINE_WITHOUT_LTAP_HF, hub_server, tmp_path, "hf-pull-foreign", repo)
    assert pulled.stdout.strip().endswith("LTAPSparseResNetForImageClassification classified")
