"""CLI: every shipped config parses; flags from DESIGN.md work; a missing earlier phase is named."""
from pathlib import Path

import pytest

from fairq.cli import DEFAULT_CONFIG, build_parser, make_context, parse_args

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


def test_default_and_named_configs_are_shipped():
    names = {p.name for p in CONFIGS}
    assert {"default.yaml", "utkface.yaml", "fairface.yaml", "celeba.yaml"} <= names


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_parses_and_instantiates(config, tmp_path):
    parser, cfg, name = parse_args(["--config", str(config), "--data.root", str(tmp_path), "--seed", "3",
                                    "--output_dir", str(tmp_path / "out"),
                                    "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "5"])
    assert name == config.stem
    assert cfg.trainer.max_epochs == 1 and cfg.trainer.limit_train_batches == 5
    init = parser.instantiate(cfg)
    dm = init.data
    assert dm.seed == 0  # --seed is the training seed; the data seed stays fixed unless data.init_args.seed is set
    ctx = make_context(parser, cfg, name)
    assert ctx.seed == 3 and ctx.datamodule.sampling_seed == 3 and ctx.datamodule.seed == 0
    assert dm.num_classes >= 2 and dm.sensitive_names
    if "default" not in config.name:
        assert Path(dm.root) == tmp_path


def test_no_config_means_the_embedded_default():
    _, cfg, name = parse_args(["--phase", "baseline"])
    assert name == "default"
    assert cfg.data.class_path.endswith("SyntheticDataModule")
    assert Path(str(cfg.config[0])) == DEFAULT_CONFIG


def test_unknown_phase_is_rejected():
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--phase", "compress", "--data.class_path", "datamodules.SyntheticDataModule"])


def test_print_config_round_trips(capsys):
    with pytest.raises(SystemExit):
        parse_args(["--print_config"])
    out = capsys.readouterr().out
    assert "class_path: datamodules.SyntheticDataModule" in out and "max_epochs" in out


def test_trainer_strategy_and_devices_reach_lightning(tmp_path):
    """``--trainer.strategy ddp --trainer.devices N --trainer.num_nodes M`` (multi-GPU / multi-node training)."""
    from fairq.cli import _trainer_kwargs

    _, cfg, _ = parse_args(["--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.num_nodes", "2",
                            "--output_dir", str(tmp_path)])
    kw = _trainer_kwargs(cfg.trainer.as_dict())
    assert kw["strategy"] == "ddp" and int(kw["devices"]) == 2 and kw["num_nodes"] == 2


@pytest.mark.parametrize("launcher", ["local", "ray"])
def test_an_entry_naming_a_model_the_run_lacks_fails_before_any_work(launcher, tmp_path, capsys):
    """Checked at startup with either launcher (a Ray sweep used to skip such an entry in its workers)."""
    import json

    from fairq.cli import main

    methods = json.dumps([{"method": "ptq_static", "bits": 8}, {"method": "ptq_static", "bits": 4,
                                                                "models": ["tiny_vit", "tiny_cnm"]}])
    rc = main(["--phase", "all", "--launcher", launcher, "--output_dir", str(tmp_path), "--models", "[tiny_cnn]",
               "--quantization.methods", methods])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert ("quantization.methods[1] (ptq_static): models ['tiny_vit', 'tiny_cnm'] are not models of this run "
            "(['tiny_cnn'])") in err, err
    assert not any(tmp_path.iterdir())  # nothing written, no data touched
    # only the phases that run need their entries' models: the baseline alone is fine
    from fairq.cli import validate_sections

    validate_sections(parse_args(["--phase", "baseline", "--models", "[tiny_cnn]", "--quantization.methods",
                                  methods])[1])
