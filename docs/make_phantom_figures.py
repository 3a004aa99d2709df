"""Make docs/phantom_variants.png and docs/phantom_hu_histograms.png (phantom versus real CT).

Usage: ``python docs/make_phantom_figures.py [--out docs] [--seed 7]``

The real CT comes from ``../shared/data`` beside the repository (TotalSegmentator example,
silver labels); it is read, never copied. The HU statistics printed at the end are the numbers
quoted in the figure note.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from l3node.analysis.volume import Volume, read_label_nifti, read_nifti  # noqa: E402
from l3node.phantom import Structure, make_phantom  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
REAL_L3_Z_MM = 299.8
ELDERLY_AGE = 80  # the real case is elderly (hip prosthesis)
CLASSES = (("normal", "normal"), ("thoracolumbar", "t12_rib_aplasia"), ("lumbosacral", "sacralization"),
           ("numeric", "six_lumbar"), ("combined", "combined"))
PHANTOM_OPTIONS = dict(matrix=256, slice_thickness_mm=3.0, scan_range="abdomen_pelvis", position="HFS",
                       arms="up", kernel="standard", phase="portal", metal=False, oral_contrast=False)


def _views(volume: Volume, l3_z: float | None):
    hu = np.clip(volume.hu, -200, 1600)
    dz, dy, dx = volume.spacing_mm
    coronal = hu.max(axis=1)[::-1]
    sagittal = hu.max(axis=2)[::-1]
    axial = None
    if l3_z is not None:
        axial = volume.hu[volume.slice_index_at(l3_z)]
        rows, cols = np.nonzero(axial > -400)
        body = np.abs(cols - np.median(cols)) < 0.45 * axial.shape[1]
        r0, r1 = rows[body].min(), rows[body].max()
        c0, c1 = cols[body].min(), cols[body].max()
        axial = axial[max(r0 - 5, 0):r1 + 5, max(c0 - 5, 0):c1 + 5]
    return coronal, sagittal, axial, dz / dx, dz / dy


def _row(axes, volume: Volume, l3_z: float | None, title: str, vertebrae: dict | None = None) -> None:
    coronal, sagittal, axial, asp_c, asp_s = _views(volume, l3_z)
    axes[0].imshow(coronal, cmap="gray", vmin=100, vmax=1300, aspect=asp_c)
    axes[1].imshow(sagittal, cmap="gray", vmin=100, vmax=1300, aspect=asp_s)
    if axial is not None:
        axes[2].imshow(axial, cmap="gray", vmin=-160, vmax=240)
    z_top = volume.z_mm[-1]
    if l3_z is not None:
        row = (z_top - l3_z) / volume.spacing_mm[0]
        for ax in axes[:2]:
            ax.axhline(row, color="tab:red", lw=0.8)
    if vertebrae:
        for name, entry in vertebrae.items():
            zc = (entry["z_inferior_mm"] + entry["z_superior_mm"]) / 2
            if entry["in_scan"] and (name.startswith("L") or name in ("T12", "S1", "sacrum")):
                axes[1].text(2, (z_top - zc) / volume.spacing_mm[0], name, color="yellow", fontsize=6,
                             va="center")
    axes[0].set_ylabel(title, fontsize=9)
    for ax, label in zip(axes, ("coronal bone MIP", "sagittal bone MIP", "axial at L3 inferior endplate")):
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(label, fontsize=7)


def variants_figure(out: Path, seed: int) -> list:
    real = read_nifti(SHARED / "ts_example_ct" / "ct.nii.gz")
    fig, axes = plt.subplots(len(CLASSES) + 1, 3, figsize=(9, 3.1 * (len(CLASSES) + 1)),
                             gridspec_kw={"width_ratios": [1, 1, 1]})
    _row(axes[0], real, REAL_L3_Z_MM, "REAL CT (TotalSegmentator example)")
    phantoms = []
    for row, (cls, variant) in enumerate(CLASSES, start=1):
        phantom = make_phantom(variant, seed=seed + row, **PHANTOM_OPTIONS)
        phantoms.append(phantom)
        truth = phantom.ground_truth
        p = phantom.patient
        title = (f"phantom {cls}: {'+'.join(truth['components'])}\n{p['sex']} {p['age_years']}y "
                 f"BMI {p['bmi']}, T12 rib {truth['twelfth_rib_length_mm']:.0f} mm")
        _row(axes[row], phantom.volume, truth["l3_inferior_endplate_z_mm"], title, truth["vertebrae"])
    fig.tight_layout()
    fig.savefig(out / "phantom_variants.png", dpi=110)
    plt.close(fig)
    return phantoms


def _stats(values: np.ndarray) -> str:
    return f"mean {values.mean():7.1f}  SD {values.std():6.1f}  n={values.size}"


def _regions(phantoms: list) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """HU of the painted (geometric) muscle, fat and vertebra regions, like the real silver masks,
    which are anatomical masks and not HU-thresholded (the phantom's tissue_labels are)."""
    muscle, fat, bone = [], [], []
    for phantom in phantoms:
        truth = phantom.ground_truth
        z = phantom.volume.z_mm
        lo = truth["vertebrae"]["L2"]["z_inferior_mm"]
        hi = truth["vertebrae"]["T11"]["z_superior_mm"]
        ks = (z >= lo) & (z <= hi)  # the T11-L2 range of the real silver masks
        s = phantom.structure_labels[ks]
        hu = phantom.volume.hu[ks]
        muscle.append(hu[s == Structure.MUSCLE])
        fat.append(hu[np.isin(s, (Structure.VAT, Structure.SAT, Structure.IMAT))])
        bone.append(phantom.volume.hu[phantom.vertebra_labels > 0])
    return np.concatenate(muscle), np.concatenate(fat), np.concatenate(bone)


def histogram_figure(out: Path, phantoms: list, elderly: list) -> None:
    sm = SHARED / "ts_example_ct_sm"
    real_sm = read_nifti(sm / "ct.nii.gz").hu
    real_muscle = real_sm[read_label_nifti(sm / "skeletal_muscle.nii.gz") > 0]
    fat_mask = (read_label_nifti(sm / "subcutaneous_fat.nii.gz") > 0) | (read_label_nifti(sm / "torso_fat.nii.gz") > 0)
    real_fat = real_sm[fat_mask]
    full = read_nifti(SHARED / "ts_example_ct" / "ct.nii.gz").hu
    real_bone = full[read_label_nifti(SHARED / "ts_example_ct" / "vertebrae.nii.gz") > 0]
    muscle, fat, bone = _regions(phantoms)
    old_muscle, old_fat, old_bone = _regions(elderly)
    pairs = (("fat (SAT + torso fat)", real_fat, fat, old_fat, (-250, 50)),
             ("skeletal muscle", real_muscle, muscle, old_muscle, (-100, 150)),
             ("vertebrae", real_bone, bone, old_bone, (-200, 1200)))
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    lines = []
    for ax, (name, real, phantom, old, rng) in zip(axes, pairs):
        bins = np.linspace(*rng, 90)
        ax.hist(real, bins, density=True, alpha=0.5, label=f"real (elderly): {real.mean():.0f} ± {real.std():.0f} HU")
        ax.hist(phantom, bins, density=True, alpha=0.5,
                label=f"phantoms (5 classes): {phantom.mean():.0f} ± {phantom.std():.0f} HU")
        ax.hist(old, bins, density=True, histtype="step", lw=1.4, color="k",
                label=f"phantoms aged {ELDERLY_AGE}: {old.mean():.0f} ± {old.std():.0f} HU")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("HU")
        ax.legend(fontsize=7)
        lines.append(f"{name:24s} real   {_stats(real)}")
        lines.append(f"{name:24s} phantom {_stats(phantom)}")
        lines.append(f"{name:24s} aged{ELDERLY_AGE} {_stats(old)}")
    fig.suptitle("HU histograms of anatomical regions, phantom (T11-L2 for soft tissue) vs real CT (silver masks)",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "phantom_hu_histograms.png", dpi=110)
    plt.close(fig)
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    if not (SHARED / "ts_example_ct" / "ct.nii.gz").exists():
        raise SystemExit(f"real CT not found under {SHARED}")
    phantoms = variants_figure(args.out, args.seed)
    elderly = [make_phantom(variant, seed=args.seed + 20 + i, age_years=ELDERLY_AGE, **PHANTOM_OPTIONS)
               for i, variant in enumerate(("normal", "sacralization"))]
    histogram_figure(args.out, phantoms, elderly)


if __name__ == "__main__":
    main()
