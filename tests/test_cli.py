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
def test_an_entry_naming_no_model_fails_before_any_work(launcher, tmp_path, capsys):
    """A typo in an entry's ``models:`` is checked at startup with either launcher (a Ray sweep used to skip such an
    entry in its workers), with close matches among the run's models and the registries."""
    import json

    from fairq.cli import main

    methods = json.dumps([{"method": "ptq_static", "bits": 8}, {"method": "ptq_static", "bits": 4,
                                                                "models": ["tiny_vit", "tiny_cnm"]}])
    rc = main(["--phase", "all", "--launcher", launcher, "--output_dir", str(tmp_path), "--models", "[tiny_cnn]",
               "--quantization.methods", methods])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert ("fairq: error: quantization.methods[1] (ptq_static): models: 'tiny_cnm' is no model (did you mean "
            "'tiny_cnn'") in err, err
    assert "this run's models are ['tiny_cnn']" in err, err
    assert not any(tmp_path.iterdir())  # nothing written, no data touched
    # only the phases that run need their entries' models: the baseline alone is fine
    from fairq.cli import validate_sections

    assert validate_sections(parse_args(["--phase", "baseline", "--models", "[tiny_cnn]", "--quantization.methods",
                                         methods])[1]) == []


def test_an_unknown_run_model_stops_the_run_in_seconds_with_close_matches(tmp_path, capsys):
    """The run's own models are checked first, with the model registry's message (not an entry's), before any model
    is built or data touched (how fast that is: the stop note measures it, not this test)."""
    from fairq.cli import main

    rc = main(["--phase", "all", "--output_dir", str(tmp_path), "--models", "[resnet5O]"])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("fairq: error: unknown model 'resnet5O' (did you mean 'resnet50'"), err
    assert "methods[" not in err and not any(tmp_path.iterdir())


def test_an_entry_for_real_models_outside_the_run_is_skipped_and_recorded(tmp_path, caplog):
    """The default's ``soft_head_pruning`` entry is for ``tiny_vit``: a run of other models skips it (one log line,
    a comment in ``config.yaml``) instead of failing; an entry naming one of the run's models still runs on it."""
    import logging

    from fairq.cli import main, validate_sections

    for models in ("[resnet18]", "[vit_tiny_patch16_224]", "[tv/resnet18]"):
        skipped = validate_sections(parse_args(["--phase", "all", "--models", models])[1])
        assert skipped == [f"quantization.methods[16] (soft_head_pruning): skipped in this run — its models: "
                           f"['tiny_vit'] are not among the run's models ['{models[1:-1]}']"], skipped
    assert validate_sections(parse_args(["--phase", "all", "--models", "[tiny_cnn, tiny_vit]"])[1]) == []
    # the skip is logged once and recorded in the run's config.yaml (the quantization phase alone then stops: no
    # baseline yet — after the config is written)
    with caplog.at_level(logging.INFO, logger="fairq"):
        rc = main(["--phase", "quantization", "--output_dir", str(tmp_path), "--models", "[resnet18]"])
    assert rc == 2
    lines = [r.getMessage() for r in caplog.records if "skipped in this run" in r.getMessage()]
    assert len(lines) == 1 and "soft_head_pruning" in lines[0]
    assert f"# {lines[0]}" in (tmp_path / "config.yaml").read_text().splitlines()


@pytest.mark.parametrize("method", ["soft_head_pruning", "head_prune"])
def test_a_method_that_cannot_apply_to_a_model_fails_at_startup(method, tmp_path, capsys):
    """Without a ``models:`` restriction, a head method on a CNN stops the run before the baselines are trained,
    naming the method, the model and the ``models:`` fix (the run's models that have heads)."""
    import json

    from fairq.cli import main

    methods = json.dumps([{"method": "ptq_static", "bits": 8}, {"method": method}])
    rc = main(["--phase", "all", "--output_dir", str(tmp_path), "--models", "[resnet18, vit_tiny_patch16_224]",
               "--quantization.methods", methods])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err and not any(tmp_path.iterdir())
    assert (f"fairq: error: quantization.methods[1] ({method}): model 'resnet18' has no attention heads (a timm "
            f"ViT or a BERT-style encoder), which {method} needs; restrict the entry to models that have them, e.g. "
            f"models: ['vit_tiny_patch16_224']") in err, err
    rc = main(["--phase", "all", "--output_dir", str(tmp_path), "--models", "[tv/resnet18]",
               "--quantization.methods", methods])
    err = capsys.readouterr().err
    assert rc == 2 and "model 'tv/resnet18' has no attention heads" in err and "or remove it" in err, err


@pytest.mark.parametrize("model", ["resnet18", "vit_tiny_patch16_224"])
@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_starts_with_another_cnn_or_vit(config, model, tmp_path):
    """The first thing a user changes: every shipped config passes the startup checks (run models, entries'
    ``models:``, what each method requires of each model) with ``--models`` set to one CNN and to one ViT that the
    config does not name, and every entry that does not run on it says so. (The end-to-end runs of the default with
    these models are the issue's acceptance, measured in the stop note: minutes each, too long for the suite.)"""
    from fairq.cli import run_models, validate_sections
    from fairq.sections import plan_run

    parser, cfg, _ = parse_args(["--config", str(config), "--data.root", str(tmp_path), "--phase", "all",
                                 "--models", f"[{model}]"])
    assert model not in (parse_args(["--config", str(config), "--data.root", str(tmp_path)])[1].models or [])
    skipped = validate_sections(cfg)
    planned = plan_run({s: cfg[s].as_dict() for s in ("quantization", "mitigation")})
    models = run_models(cfg)
    text = cfg.text.model  # a text config's masked LMs replace --models
    assert models == (([text] if isinstance(text, str) else list(text)) if text else [model])
    not_run = sorted({p.entry for cells in planned.values() for p in cells if not any(p.runs_on(m) for m in models)})
    assert sorted(line.split(" ")[0] for line in skipped) == not_run


def test_text_model_is_one_name_or_a_list(tmp_path):
    """``text.model``: the shipped text config names two subjects; one name on the command line replaces the list;
    a list with a repeated name is one clear error."""
    from fairq.cli import run_models
    from fairq.errors import UserError
    from fairq.sections import TextSection

    text = Path(__file__).resolve().parents[1] / "configs" / "stereoset.yaml"
    assert run_models(parse_args(["--config", str(text)])[1]) == ["fairq-tiny-bert", "fairq-minilm-mlm"]
    assert run_models(parse_args(["--config", str(text), "--text.model", "bert-base-uncased"])[1]) == \
        ["bert-base-uncased"]
    assert run_models(parse_args([])[1]) == ["tiny_cnn", "tiny_vit"]  # no text model: --models
    with pytest.raises(UserError, match="distinct"):
        TextSection(model=["fairq-tiny-bert", "fairq-tiny-bert"])
