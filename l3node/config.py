"""Configuration: one YAML file -> frozen pydantic models.

Every problem in a file is reported at once, each with its path
(``destinations.1.port: must be 1..65535``), so an administrator fixes the file in
one go. The commented reference is ``config.yaml`` at the repository root; the
defaults here are what a missing key means.
"""

from __future__ import annotations

import re
from enum import Enum
from pathlib import Path
from typing import Annotated, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from l3node.errors import ConfigError

AETitle = Annotated[str, Field(min_length=1, max_length=16, pattern=r"^[ -\[\]-~]*[!-\[\]-~][ -\[\]-~]*$")]
Port = Annotated[int, Field(ge=1, le=65535)]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class NonImagePolicy(str, Enum):
    IGNORE = "ignore"  # accept and discard (answer success, keep nothing)
    REFUSE = "refuse"  # do not offer the presentation context: the PACS sees a rejection


class NodeConfig(_Model):
    ae_title: AETitle = "L3NODE"
    bind_address: str = "0.0.0.0"
    port: Port = 11112
    allowed_calling_aes: tuple[AETitle, ...] = Field(
        default=(), description="calling AE titles accepted; empty means any (not advised in production)"
    )
    allowed_source_ips: tuple[str, ...] = Field(default=(), description="peer IPs accepted; empty means any")
    other_sop_classes: NonImagePolicy = NonImagePolicy.REFUSE
    max_associations: Annotated[int, Field(ge=1, le=64)] = 8
    network_timeout_s: Annotated[float, Field(gt=0)] = 60.0


class StorageConfig(_Model):
    root: Path = Path("./var")
    keep_done_studies_days: Annotated[int, Field(ge=0)] = 7


class AssemblyConfig(_Model):
    quiet_period_s: Annotated[float, Field(ge=0)] = 10.0
    max_wait_s: Annotated[float, Field(gt=0)] = 900.0

    @model_validator(mode="after")
    def _bounds(self) -> "AssemblyConfig":
        if self.max_wait_s < self.quiet_period_s:
            raise ValueError("max_wait_s must be >= quiet_period_s")
        return self


class Range(_Model):
    min: float
    max: float

    @model_validator(mode="after")
    def _ordered(self) -> "Range":
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) must be <= max ({self.max})")
        return self


def _check_regex(value: str | None) -> str | None:
    if value is not None:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"not a valid regular expression: {exc}") from None
    return value


class SelectionConfig(_Model):
    """Rules deciding which series of a study is analysed (data, not code)."""

    modalities: tuple[str, ...] = ("CT",)
    image_type_required: tuple[str, ...] = ("AXIAL",)
    image_type_excluded: tuple[str, ...] = ("LOCALIZER", "SCOUT", "PROJECTION IMAGE", "MPR", "REFORMATTED",
                                            "MAXIMUM", "MINIMUM")
    slice_thickness_mm: Range = Range(min=0.5, max=5.0)
    description_include: str | None = None
    description_exclude: str | None = r"(?i)(scout|topo|locali[sz]er|dose|mip|lung|bone|coronal|sagittal)"
    min_instances: Annotated[int, Field(ge=2)] = 20
    preferred_kernels: tuple[str, ...] = Field(
        default=(r"(?i)^(b|br|i)?[234]\d", r"(?i)(soft|standard|body)"),
        description="regexes matched against ConvolutionKernel, best first",
    )
    preferred_thickness_mm: Annotated[float, Field(gt=0)] = 3.0
    analyse: Literal["best", "all"] = "best"

    _regexes = field_validator("description_include", "description_exclude")(_check_regex)

    @field_validator("preferred_kernels")
    @classmethod
    def _kernel_regexes(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for pattern in value:
            _check_regex(pattern)
        return value


class AnalysisConfig(_Model):
    device: Literal["auto", "cpu", "cuda"] = "auto"
    muscle_hu: Range = Range(min=-29, max=150)
    fat_hu: Range = Range(min=-190, max=-30)
    average_slices_mm: Annotated[float, Field(ge=0, le=20)] = 0.0
    variant_convention: Literal["count_from_sacrum", "count_from_ribs"] = Field(
        default="count_from_ribs",
        description="which count names L3 when rib and sacrum counts disagree; the paper's radiologists "
        "counted from the thoracic spine and ribs",
    )
    cutoff_set: Literal["martin2013", "prado2008", "asian"] = "martin2013"
    l3_second_opinion: bool = Field(
        default=True, description="check the anatomy's L3 with the L3 network; disagreement lowers confidence"
    )
    imat_edge: Literal["fat_depot", "outline"] = Field(
        default="fat_depot",
        description="fat-range pixels on the muscle's own edge: counted with the fat beside them (fat_depot), "
        "or as IMAT where their centre lies inside the muscle outline (outline: outline, then threshold)",
    )
    segmentation: Literal["classical", "network"] = Field(
        default="classical", description="HU ranges + compartment geometry, or the tissue U-Net"
    )
    weights_dir: Path | None = Field(default=None, description="trained models; None: the shipped weights/")


class OutputSeries(_Model):
    enabled: bool = True
    series_number: Annotated[int, Field(ge=1, le=2**31 - 1)]
    series_description: Annotated[str, Field(max_length=64)]


class OutputsConfig(_Model):
    seg: OutputSeries = OutputSeries(series_number=9901, series_description="L3 body composition SEG")
    sr: OutputSeries = OutputSeries(series_number=9902, series_description="L3 body composition report")
    overlay: OutputSeries = OutputSeries(series_number=9903, series_description="L3 body composition overlay")
    sr_sop_class: Literal["comprehensive", "comprehensive3d"] = "comprehensive"
    declined_report: bool = True
    manufacturer: Annotated[str, Field(max_length=64)] = "l3node"
    institution_name: Annotated[str, Field(max_length=64)] | None = None


class DimseDestination(_Model):
    type: Literal["dimse"] = "dimse"
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,32}$")]
    ae_title: AETitle
    host: str
    port: Port
    calling_ae_title: AETitle | None = None  # default: node.ae_title


class DicomwebDestination(_Model):
    type: Literal["dicomweb"]
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,32}$")]
    url: Annotated[str, Field(pattern=r"^https?://")]
    username: str | None = None
    password: str | None = None
    timeout_s: Annotated[float, Field(gt=0)] = 30.0


Destination = Annotated[Union[DimseDestination, DicomwebDestination], Field(discriminator="type")]


class SendingConfig(_Model):
    max_attempts: Annotated[int, Field(ge=1, le=1000)] = 10
    backoff_initial_s: Annotated[float, Field(ge=0)] = 5.0
    backoff_max_s: Annotated[float, Field(ge=0)] = 600.0


class LoggingConfig(_Model):
    format: Literal["json", "console"] = "json"
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


class Config(_Model):
    node: NodeConfig = NodeConfig()
    storage: StorageConfig = StorageConfig()
    assembly: AssemblyConfig = AssemblyConfig()
    selection: SelectionConfig = SelectionConfig()
    analysis: AnalysisConfig = AnalysisConfig()
    outputs: OutputsConfig = OutputsConfig()
    destinations: tuple[Destination, ...] = ()
    sending: SendingConfig = SendingConfig()
    logging: LoggingConfig = LoggingConfig()

    @field_validator("destinations", mode="before")
    @classmethod
    def _default_destination_type(cls, value):
        # A destination without "type" is a DIMSE (C-STORE) peer: the common case.
        if isinstance(value, list):
            return [dict(item, type=item.get("type", "dimse")) if isinstance(item, dict) else item for item in value]
        return value

    @model_validator(mode="after")
    def _unique_destinations(self) -> "Config":
        names = [d.name for d in self.destinations]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"destination names must be unique; repeated: {', '.join(duplicates)}")
        return self


def _problems(error: ValidationError) -> list[str]:
    problems = []
    for item in error.errors():
        # Drop pydantic's union-member tags ("dimse", "function-after[...]") from the path.
        path = ".".join(str(p) for p in item["loc"] if not (isinstance(p, str) and ("[" in p or p in {"dimse", "dicomweb"})))
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] in {"greater_than_equal", "less_than_equal", "greater_than", "less_than"}:
            message = f"{message} (got {item.get('input')!r})"
        problems.append(f"{path or '<root>'}: {message}")
    return problems


def parse_config(data: dict | None) -> Config:
    """Validate a configuration mapping.

    Raises
    ------
    ConfigError
        Listing every problem with its dotted path.
    """
    try:
        return Config.model_validate(data or {})
    except ValidationError as exc:
        raise ConfigError(_problems(exc)) from None


def duplicate_keys(node: yaml.Node | None, path: str = "") -> list[str]:
    """Keys given twice in one mapping of a composed YAML document, each with its path and lines."""
    problems: list[str] = []
    if isinstance(node, yaml.MappingNode):
        first_line: dict[object, int] = {}
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            child = f"{path}.{key}" if path else str(key)
            if key is not None and key != "<<":
                line = key_node.start_mark.line + 1
                if key in first_line:
                    problems.append(f"{child}: given twice (lines {first_line[key]} and {line}); keep one")
                else:
                    first_line[key] = line
            problems += duplicate_keys(value_node, child)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            problems += duplicate_keys(item, f"{path}.{index}" if path else str(index))
    return problems


def load_config(path: str | Path | None) -> Config:
    """Load and validate a YAML configuration file; ``None`` gives the defaults.

    Relative ``storage.root`` and ``analysis.weights_dir`` stay relative to the
    working directory, as administrators expect from a service's config.

    Raises
    ------
    ConfigError
        If the file is missing, is not YAML, gives a key twice, or has invalid values.
    """
    if path is None:
        return Config()
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError([f"<file>: cannot read {path}: {exc.strerror}"]) from None
    loader = yaml.SafeLoader(text)
    try:  # what yaml.safe_load does, keeping the node tree for the duplicate check
        node = loader.get_single_node()
        duplicates = duplicate_keys(node)
        data = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as exc:
        raise ConfigError([f"<file>: not valid YAML: {exc}"]) from None
    finally:
        loader.dispose()
    if duplicates:
        # YAML itself lets the last one win, silently: an administrator who added a
        # second `port:` or `destinations:` would run with half of what they wrote.
        raise ConfigError(duplicates)
    if data is not None and not isinstance(data, dict):
        raise ConfigError(["<root>: the file must hold a mapping of sections"])
    return parse_config(data)
