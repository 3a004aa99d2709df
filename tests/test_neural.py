"""The learned models: nets, weights manifests, device choice, a tiny training run, shipped weights."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from l3node.analysis import neural
from l3node.analysis.models import L3HeatmapNet, TissueUNet, architecture_of, build_model, parameter_count
from l3node.analysis.neural import ModelError, choose_device, load_l3_net, load_tissue_net, mip_inputs
from l3node.analysis.tissues import Tissue
from l3node.analysis.volume import Volume
from l3node.phantom import make_phantom
from l3node.train.train_cli import main_train

REPO = Path(__file__).resolve().parents[1]
SHIPPED_L3 = REPO / "weights" / "l3_mip"
SHIPPED_SEG = REPO / "weights" / "tissue_unet"
# Measured on 63 held-out phantoms (45 validation in weights/l3_mip/manifest.json, 18 fresh in
# bench/bench_neural.py): mean 0.4 mm, largest 2.3 mm. A fresh phantom must land within ~2x that.
L3_TOLERANCE_MM = 5.0
# Measured mean Dice of skeletal muscle on held-out L3 slices: 0.95 (manifest, bench).
MUSCLE_DICE_MIN = 0.90
TINY_L3 = {"channels": [4, 8], "z_channels": 8, "dilations": [1, 2, 4]}
TINY_SEG = {"channels": [4, 8]}


def test_l3_net_gives_one_logit_per_row_for_any_length():
    net = L3HeatmapNet()
    for z in (37, 120):
        out = net(torch.zeros(2, 1, z, 128), torch.zeros(2, 1, z, 128))
        assert out.shape == (2, z)
    rebuilt = build_model("l3", architecture_of(net))
    assert parameter_count(rebuilt) == parameter_count(net)


def test_tissue_unet_gives_five_logits_per_pixel():
    net = TissueUNet()
    out = net(torch.zeros(1, 2, 64, 96))
    assert out.shape == (1, 1 + len(Tissue), 64, 96)
    assert parameter_count(build_model("seg", architecture_of(net))) == parameter_count(net)
    with pytest.raises(ValueError, match="no network"):
        build_model("l3", architecture_of(net))


def test_mip_inputs_are_resampled_to_the_manifest_grid():
    phantom_like = Volume(hu=np.full((50, 100, 80), -1000.0, np.float32), spacing_mm=(2.0, 1.5, 1.5),
                                 origin_mm=(0.0, 0.0, -20.0))
    phantom_like.hu[19:22, 40:60, 30:50] = 1000.0  # a bone block at z = 18..22 mm
    coronal, sagittal, z0 = mip_inputs(phantom_like)
    assert coronal.shape == sagittal.shape == (25, 128)  # 98 mm at 4 mm rows; 128 columns
    assert z0 == -20.0
    assert 0.0 <= coronal.min() and coronal.max() <= 1.0
    assert int(np.argmax(coronal.max(axis=1))) == 10  # row 10 (z = -20 + 4 * 10)


def test_device_auto_picks_cpu_without_cuda_and_cuda_when_present(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert choose_device("auto").type == "cpu"
    with pytest.raises(ModelError, match="no CUDA"):
        choose_device("cuda")
    with pytest.raises(ModelError, match="unknown device"):
        choose_device("tpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert choose_device("auto").type == "cuda"


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory) -> dict[str, Path]:
    """A real (tiny) training run of both tasks: 1 training + 1 validation phantom, 1 epoch."""
    root = tmp_path_factory.mktemp("tiny")
    cache = root / "cache"
    common = dict(phantoms_per_variant=1, val_per_variant=1, epochs=1, site_data=None, device="cpu",
                  variants=["normal"], cache_dir=cache)
    return {"l3": main_train("l3", root / "l3", architecture=TINY_L3, **common),
            "seg": main_train("seg", root / "seg", architecture=TINY_SEG, **common)}


def test_tiny_training_writes_loadable_weights_and_manifest(tiny_weights):
    for task, folder in tiny_weights.items():
        manifest = json.loads((folder / "manifest.json").read_text())
        assert manifest["task"] == task
        assert manifest["sha256"] == neural.sha256_of(folder / "model.pt")
        assert manifest["training_data"]["n_train_phantoms"] == 1
        assert manifest["epochs"] == 1 and manifest["validation"] is not None
        for key in ("input_spacing_mm", "intensity_window_hu", "architecture", "parameter_count",
                    "torch_version", "date", "device"):
            assert key in manifest
    volume = Volume(hu=np.random.default_rng(0).normal(0, 300, (40, 64, 64)).astype(np.float32),
                           spacing_mm=(5.0, 2.0, 2.0), origin_mm=(0.0, 0.0, 100.0))
    answer = load_l3_net(tiny_weights["l3"], device="cpu").predict_l3_z(volume)
    assert 100.0 <= answer.z_mm <= 100.0 + 39 * 5.0
    assert 0.0 < answer.confidence <= 1.0
    labels = load_tissue_net(tiny_weights["seg"], device="cpu").predict_tissues(volume.hu[3], (2.0, 2.0))
    assert labels.shape == (64, 64) and labels.dtype == np.uint8 and labels.max() <= 4


def test_tiny_seg_training_reports_dice_on_3mm_copies(tiny_weights):
    validation = json.loads((tiny_weights["seg"] / "manifest.json").read_text())["validation"]
    assert set(validation["dice_all_slices_at_3mm"]) == {"skeletal_muscle", "imat", "vat", "sat"}


def test_coarse_copy_keeps_the_field_of_view_and_averages_each_pixel():
    from l3node.train.train_seg import coarse_copy

    hu = np.full((300, 300), -100.0, np.float32)
    hu[:, 150:] = 50.0  # a straight fat | muscle edge at 300 px * 1 mm
    coarse = coarse_copy(hu, (1.0, 1.0), 3.0)
    assert coarse.shape == (100, 100)
    assert abs(float(coarse.mean()) - float(hu.mean())) < 1.0
    row = coarse[50]
    assert row[10] == pytest.approx(-100.0, abs=0.5) and row[90] == pytest.approx(50.0, abs=0.5)
    # the edge falls inside one or two coarse pixels, as partial volume, not a hard step
    partial = row[(row > -95.0) & (row < 45.0)]
    assert 1 <= partial.size <= 3


def test_sha256_mismatch_is_a_clear_error(tiny_weights, tmp_path):
    folder = tmp_path / "l3"
    shutil.copytree(tiny_weights["l3"], folder)
    with open(folder / "model.pt", "ab") as f:
        f.write(b"\0")
    with pytest.raises(ModelError, match="sha256 .* does not match manifest"):
        load_l3_net(folder)
    with pytest.raises(ModelError, match="holds a 'l3' model"):
        load_tissue_net(tiny_weights["l3"])
    with pytest.raises(ModelError, match="missing"):
        load_l3_net(tmp_path / "nowhere")


def test_cuda_out_of_memory_falls_back_to_cpu(tiny_weights, monkeypatch):
    net = load_tissue_net(tiny_weights["seg"], device="cpu")
    net.device = torch.device("cuda")  # pretend the model sits on a GPU that runs out of memory
    real_forward = net._forward

    def forward(device, *inputs):
        if device.type == "cuda":
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real_forward(device, *inputs)

    monkeypatch.setattr(net, "_forward", forward)
    labels = net.predict_tissues(np.zeros((48, 48), np.float32), (2.0, 2.0))
    assert labels.shape == (48, 48)
    assert net.device.type == "cpu"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: this test runs where a GPU is")
def test_on_cuda_the_nets_train_and_agree_with_the_cpu(fresh_phantom, tmp_path):
    """Where a GPU is, ``auto`` takes it: a tiny training runs there and says so in its manifest, and
    the shipped nets give the CPU's answers (labels on >= 99.9 % of pixels, L3 within 0.5 mm)."""
    folder = main_train("seg", tmp_path / "seg", phantoms_per_variant=1, val_per_variant=1, epochs=1,
                        site_data=None, device="auto", variants=["normal"], cache_dir=tmp_path / "cache",
                        architecture=TINY_SEG)
    assert json.loads((folder / "manifest.json").read_text())["device"].startswith("cuda")
    k = fresh_phantom.ground_truth["l3_slice_index"]
    hu, pixel_mm = fresh_phantom.volume.hu[k], fresh_phantom.volume.spacing_mm[1:]
    on_gpu, on_cpu = load_tissue_net(SHIPPED_SEG, device="auto"), load_tissue_net(SHIPPED_SEG, device="cpu")
    assert on_gpu.device.type == "cuda"
    assert (on_gpu.predict_tissues(hu, pixel_mm) == on_cpu.predict_tissues(hu, pixel_mm)).mean() >= 0.999
    z_gpu = load_l3_net(SHIPPED_L3, device="auto").predict_l3_z(fresh_phantom.volume).z_mm
    z_cpu = load_l3_net(SHIPPED_L3, device="cpu").predict_l3_z(fresh_phantom.volume).z_mm
    assert abs(z_gpu - z_cpu) < 0.5


@pytest.fixture(scope="module")
def fresh_phantom():
    # Seed 424242 is outside the training (1000 + 10000 i + j) and validation (900000 + ...) seeds.
    return make_phantom("sacralization", seed=424242, matrix=256, slice_thickness_mm=5.0,
                        scan_range="abdomen_pelvis")


def test_shipped_l3_weights_find_l3_on_a_fresh_phantom(fresh_phantom):
    net = load_l3_net(SHIPPED_L3, device="auto")
    answer = net.predict_l3_z(fresh_phantom.volume)
    truth = fresh_phantom.ground_truth["l3_inferior_endplate_z_mm"]
    assert abs(answer.z_mm - truth) < L3_TOLERANCE_MM, (answer, truth)


def test_shipped_tissue_weights_segment_a_fresh_l3_slice(fresh_phantom):
    net = load_tissue_net(SHIPPED_SEG, device="auto")
    k = fresh_phantom.ground_truth["l3_slice_index"]
    labels = net.predict_tissues(fresh_phantom.volume.hu[k], fresh_phantom.volume.spacing_mm[1:])
    truth = fresh_phantom.tissue_labels[k]
    muscle, gold = labels == Tissue.SKELETAL_MUSCLE, truth == Tissue.SKELETAL_MUSCLE
    dice = 2 * (muscle & gold).sum() / (muscle.sum() + gold.sum())
    assert dice >= MUSCLE_DICE_MIN


def test_network_segmentation_follows_the_tissue_definition(fresh_phantom, tmp_path):
    """`analysis.segmentation: network`: the net's regions intersected with the HU ranges,
    the same definition as the rules and the phantom truth; and `evaluate seg` uses it."""
    from l3node.analysis.neural import segment_slice_network
    from l3node.config import AnalysisConfig
    from l3node.train.evaluate_seg import evaluate_cases

    k = fresh_phantom.ground_truth["l3_slice_index"]
    hu, pixel_mm = fresh_phantom.volume.hu[k], fresh_phantom.volume.spacing_mm[1:]
    config = AnalysisConfig(segmentation="network", weights_dir=SHIPPED_SEG.parent)
    labels = segment_slice_network(hu, pixel_mm, config)
    regions = load_tissue_net(SHIPPED_SEG).predict_tissues(hu, pixel_mm)
    muscle, imat = labels == Tissue.SKELETAL_MUSCLE, labels == Tissue.IMAT
    assert hu[muscle].min() >= -29 and hu[muscle].max() <= 150
    assert hu[imat].max() <= -30 and hu[labels == Tissue.VAT].max() <= -30
    assert np.isin(regions[muscle | imat], [Tissue.SKELETAL_MUSCLE, Tissue.IMAT]).all()
    assert (regions[muscle] == Tissue.SKELETAL_MUSCLE).mean() > 0.9  # mostly the net's own muscle
    gold = fresh_phantom.tissue_labels[k] == Tissue.SKELETAL_MUSCLE
    assert 2 * (muscle & gold).sum() / (muscle.sum() + gold.sum()) >= MUSCLE_DICE_MIN

    case = ["phantom:normal:3"]
    network = evaluate_cases(case, config)[0]
    classical = evaluate_cases(case, AnalysisConfig())[0]
    assert network.area_pred_cm2 != classical.area_pred_cm2  # the configured segmentation was used


def test_shipped_weights_are_found_in_a_checkout_and_after_pip_install(tmp_path):
    """A non-editable install (pip install ., the container) has no repository: the models
    go to <prefix>/share/l3node/weights via pyproject's data-files, which must list every file."""
    import tomllib

    data_files = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["data-files"]
    listed = {f for files in data_files.values() for f in files}
    on_disk = {p.relative_to(REPO).as_posix() for p in (REPO / "weights").rglob("*") if p.is_file()}
    assert listed == on_disk
    for target, files in data_files.items():
        assert all(target == "share/l3node/" + str(Path(f).parent) for f in files), target

    checkout, installed = tmp_path / "repo" / "weights", tmp_path / "prefix" / "share" / "l3node" / "weights"
    (installed / "l3_mip").mkdir(parents=True)
    (installed / "l3_mip" / "manifest.json").write_text("{}")
    assert neural.shipped_weights_dir((checkout, installed)) == installed
    (checkout / "l3_mip").mkdir(parents=True)
    (checkout / "l3_mip" / "manifest.json").write_text("{}")
    assert neural.shipped_weights_dir((checkout, installed)) == checkout
    assert neural.shipped_weights_dir((tmp_path / "none", tmp_path / "neither")) == tmp_path / "none"


SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.mark.shared
@pytest.mark.skipif(not (SHARED / "ts_example_ct").is_dir(), reason="../shared/data/ts_example_ct is absent")
def test_site_l3_samples_read_a_labelled_case(tmp_path):
    case = tmp_path / "site" / "case1"
    case.mkdir(parents=True)
    for name in ("ct.nii.gz", "vertebrae.nii.gz", "vertebral_bodies_and_discs.nii.gz"):
        (case / name).symlink_to(SHARED / "ts_example_ct" / name)
    (case / "vertebrae.json").write_text(json.dumps({"28": "L4", "29": "L3", "30": "L2"}))
    from l3node.train.datasets import site_l3_samples

    [sample] = site_l3_samples(tmp_path / "site")
    assert sample["l3_z_mm"] == pytest.approx(299.8, abs=0.2)  # shared/data/README.md
    assert sample["coronal"].shape[1] == 128
