"""Configuration: the shipped file is valid, and every problem is reported with its path."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from l3node.cli import main
from l3node.config import Config, load_config, parse_config
from l3node.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def test_shipped_config_is_valid_and_matches_documented_defaults():
    config = load_config(REPO / "config.yaml")
    defaults = Config()
    # Only the two keys the file's header names as examples differ from the defaults.
    assert config.assembly == defaults.assembly
    assert config.selection == defaults.selection
    assert config.analysis == defaults.analysis
    assert config.outputs == defaults.outputs
    assert config.node.allowed_calling_aes == ("ORTHANC",)
    assert [d.name for d in config.destinations] == ["pacs"]


def test_every_problem_is_listed_with_its_path():
    bad = {
        "node": {"ae_title": "A_TITLE_THAT_IS_TOO_LONG", "port": 70000},
        "assembly": {"quiet_period_s": 30, "max_wait_s": 5},
        "selection": {"description_exclude": "(unclosed", "slice_thickness_mm": {"min": 5, "max": 1}},
        "destinations": [
            {"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": 104},
            {"name": "pacs2", "ae_title": "PACS", "host": "127.0.0.1", "port": 0},
            {"type": "dicomweb", "name": "web", "url": "ftp://nowhere"},
        ],
        "unknown_section": {},
    }
    with pytest.raises(ConfigError) as info:
        parse_config(bad)
    paths = [p.split(":")[0] for p in info.value.problems]
    assert paths == [
        "node.ae_title",
        "node.port",
        "assembly",
        "selection.slice_thickness_mm",
        "selection.description_exclude",
        "destinations.1.port",
        "destinations.2.url",
        "unknown_section",
    ]
    assert any("must be <= max" in p or "min (5.0) must be <= max" in p for p in info.value.problems)


def test_duplicate_destination_names_are_refused():
    with pytest.raises(ConfigError, match="repeated: pacs"):
        parse_config({"destinations": [{"name": "pacs", "ae_title": "A", "host": "h", "port": 1}] * 2})


def test_a_key_given_twice_is_refused_with_both_lines(tmp_path):
    # Plain YAML keeps the last value silently: the node would run on the port the
    # administrator meant to replace, or with one destination of two.
    text = (REPO / "config.yaml").read_text()
    text += "\nanalysis:\n  imat_edge: outline\n"
    text = text.replace("  port: 11112\n", "  port: 11112\n  port: 104\n", 1)
    text += "destinations:\n  - {name: a, ae_title: A, host: h, port: 1, port: 2}\n"
    path = tmp_path / "twice.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    paths = [p.split(":")[0] for p in info.value.problems]
    assert paths == ["node.port", "analysis", "destinations", "destinations.0.port"]
    assert all("given twice (lines" in p for p in info.value.problems)
    n_lines = len(text.splitlines())
    assert f"and {n_lines})" in info.value.problems[-1]  # the last line of the file: the second `port`


def test_destination_type_defaults_to_dimse():
    config = parse_config({"destinations": [{"name": "p", "ae_title": "A", "host": "h", "port": 1}]})
    assert config.destinations[0].type == "dimse"


def test_check_config_command(tmp_path, capsys):
    assert main(["check-config", str(REPO / "config.yaml")]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["node"]["ae_title"] == "L3NODE"

    broken = tmp_path / "broken.yaml"
    broken.write_text("destinations:\n  - {name: a, ae_title: X, host: h, port: 99999}\n")
    assert main(["check-config", str(broken)]) == 2
    assert "destinations.0.port" in capsys.readouterr().err

    assert main(["check-config", str(tmp_path / "missing.yaml")]) == 2
    assert "cannot read" in capsys.readouterr().err

    notyaml = tmp_path / "list.yaml"
    notyaml.write_text("- just\n- a list\n")
    assert main(["check-config", str(notyaml)]) == 2


def test_evaluate_seg_reads_the_analysis_settings(tmp_path, capsys):
    broken = tmp_path / "broken.yaml"
    broken.write_text("analysis:\n  imat_edge: rim\n")
    out = tmp_path / "eval"
    assert main(["evaluate", "seg", "phantom:normal:0", "--config", str(broken), "--out", str(out)]) == 2
    assert "analysis.imat_edge" in capsys.readouterr().err
    assert not out.exists(), "nothing evaluated with a broken configuration"
    assert parse_config({"analysis": {"imat_edge": "outline"}}).analysis.imat_edge == "outline"
