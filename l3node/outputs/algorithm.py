"""Which algorithm produced the results, as written into SEG and SR.

The identification comes from the weights manifest (``weights/<name>/manifest.json``,
the nnU-Net-style metadata file beside the weights) when a network is installed,
and otherwise names l3node's own rule-based fallback ("threshold+geometry") at the
package version. SEG writes it as the Segment Algorithm Identification (PS3.3
C.8.20.2, Algorithm Identification Macro 10.16) and SR as TID 4019.

Manifest keys read here (others are ignored): ``name`` (str, default: the folder
name), ``version`` (str, required), ``source`` (str, optional: where the weights come
from, e.g. a training run or publication).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
from pydicom.sr.coding import Code

import l3node
from l3node.outputs import codes

FALLBACK_NAME = "threshold+geometry"
MANIFEST_NAME = "manifest.json"


@dataclass(frozen=True)
class AlgorithmInfo:
    """Name, version and origin of the algorithm that made a result.

    ``source`` is free text (may be ``None``); ``neural_network`` selects the
    CID 7162 family: Artificial Intelligence, or Histogram Analysis for the
    threshold fallback.
    """

    name: str
    version: str
    source: str | None = None
    neural_network: bool = False

    @property
    def family(self) -> Code:
        """The CID 7162 algorithm family code."""
        return codes.FAMILY_AI if self.neural_network else codes.FAMILY_RULE_BASED

    def seg_identification(self) -> hd.AlgorithmIdentificationSequence:
        """The SEG Segment Algorithm Identification (Algorithm Identification Macro)."""
        return hd.AlgorithmIdentificationSequence(
            name=self.name[:64], family=self.family, version=self.version[:64], source=self.source
        )

    def sr_identification(self) -> hd.sr.AlgorithmIdentification:
        """The SR TID 4019 Algorithm Identification."""
        return hd.sr.AlgorithmIdentification(name=self.name, version=self.version)


def fallback_algorithm_info() -> AlgorithmInfo:
    """The rule-based fallback at the installed l3node version."""
    return AlgorithmInfo(name=FALLBACK_NAME, version=l3node.__version__, source="l3node", neural_network=False)


def _from_manifest(path: Path) -> AlgorithmInfo:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: cannot read weights manifest: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: weights manifest must be a JSON object")
    version = data.get("version")
    if not isinstance(version, (str, int, float)) or str(version).strip() == "":
        raise ValueError(f"{path}: weights manifest has no 'version'")
    name = data.get("name", path.parent.name)
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"{path}: weights manifest 'name' must be a non-empty string")
    source = data.get("source")
    return AlgorithmInfo(
        name=name.strip(),
        version=str(version).strip(),
        source=str(source) if source is not None else None,
        neural_network=True,
    )


def load_algorithm_info(weights_dir: Path, model_name: str | None = None) -> AlgorithmInfo:
    """Identify the algorithm from the weights folder.

    Parameters
    ----------
    weights_dir
        ``analysis.weights_dir`` of the configuration: the folder holding one
        sub-folder per model (``weights/<name>/manifest.json``), or one model folder itself.
    model_name
        Which sub-folder to read. ``None``: ``weights_dir/manifest.json`` if present,
        else the only sub-folder that has a manifest.

    Returns
    -------
    AlgorithmInfo
        From the manifest, or :func:`fallback_algorithm_info` when there is none
        (no network installed).

    Raises
    ------
    ValueError
        If a manifest exists but is unreadable or lacks a version, if ``model_name``
        names a folder without a manifest, or if several models are installed and
        ``model_name`` is not given.
    """
    weights_dir = Path(weights_dir)
    if model_name is not None:
        path = weights_dir / model_name / MANIFEST_NAME
        if not path.is_file():
            raise ValueError(f"{path}: no weights manifest for model {model_name!r}")
        return _from_manifest(path)
    if (weights_dir / MANIFEST_NAME).is_file():
        return _from_manifest(weights_dir / MANIFEST_NAME)
    found = sorted(weights_dir.glob(f"*/{MANIFEST_NAME}")) if weights_dir.is_dir() else []
    if not found:
        return fallback_algorithm_info()
    if len(found) > 1:
        names = ", ".join(p.parent.name for p in found)
        raise ValueError(f"{weights_dir}: several models installed ({names}); name one")
    return _from_manifest(found[0])
