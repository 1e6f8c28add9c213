"""Bad input to `ofaserve compress`: one clear line on stderr, exit 2, nothing written."""
import pytest

from ofaserve.compress.cli import main


def _run(capsys, argv):
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    return code, err


@pytest.fixture
def data(tmp_path, tiny_checkpoint):
    return tiny_checkpoint


def _base(tmp_path, ckpt, train, dev):
    return ["--model_name_or_path", str(ckpt), "--train_file", str(train), "--dev_file", str(dev),
            "--output_dir", str(tmp_path / "out"), "--no_progress"]


@pytest.mark.parametrize("case,expect", [
    ("missing_model", "does not exist"),
    ("corrupt_model", "cannot read"),
    ("unknown_task", "unknown task"),
    ("empty_file", "holds no rows"),
    ("one_class", "only one class"),
    ("bad_width", "width_mult_list"),
    ("busy_output", "holds other content"),
    ("wrong_model_type", "only bert"),
])
def test_bad_input(case, expect, tmp_path, capsys, tiny_checkpoint):
    ckpt, train, dev = tiny_checkpoint
    argv = _base(tmp_path, ckpt, train, dev)
    if case == "missing_model":
        argv[1] = str(tmp_path / "nope")
    elif case == "corrupt_model":
        bad = tmp_path / "bad"
        bad.mkdir()
        (bad / "model.safetensors").write_bytes(b"\x00garbage" * 10)
        (bad / "vocab.txt").write_text((ckpt / "vocab.txt").read_text())
        (bad / "config.json").write_text((ckpt / "config.json").read_text())
        argv[1] = str(bad)
    elif case == "unknown_task":
        argv = ["--task_name", "sst-9", "--output_dir", str(tmp_path / "out")]
    elif case == "empty_file":
        (tmp_path / "empty.csv").write_text("text,label\n")
        argv[3] = str(tmp_path / "empty.csv")
    elif case == "one_class":
        (tmp_path / "one.csv").write_text("text,label\ngood film,pos\nfine film,pos\n")
        argv[3] = str(tmp_path / "one.csv")
    elif case == "bad_width":
        argv += ["--width_mult_list", "0.8", "0.5"]
    elif case == "busy_output":
        (tmp_path / "out").mkdir()
        (tmp_path / "out" / "thesis.tex").write_text("precious")
    elif case == "wrong_model_type":
        argv += ["--model_type", "gpt2"]
    code, err = _run(capsys, argv)
    assert code == 2
    assert len(err) == 1 and err[0].startswith("error:") and expect in err[0], err
    if case == "busy_output":
        assert (tmp_path / "out" / "thesis.tex").read_text() == "precious"
    else:
        assert not (tmp_path / "out").exists()
    assert not (tmp_path / "out.partial").exists()


def test_full_profile_is_the_recorded_recipe_and_flags_override_it():
    from ofaserve.compress.cli import build_parser, options_from_args

    full = options_from_args(build_parser().parse_args(["--profile", "full", "--output_dir", "x"]))
    assert (full.num_train_epochs, full.lambda_ce, full.save_steps, full.max_train_samples) == (3, 0.5, 106, None)
    mine = options_from_args(build_parser().parse_args(
        ["--profile", "full", "--lambda_ce", "0", "--num_train_epochs", "2", "--output_dir", "x"]))
    assert (mine.lambda_ce, mine.num_train_epochs) == (0.0, 2)
    plain = options_from_args(build_parser().parse_args(["--output_dir", "x"]))
    assert plain.lambda_ce == 0.0 and plain.num_train_epochs == 1
    # learning rates: the full recipe's unless a profile or a flag says otherwise
    assert (full.teacher_learning_rate, full.learning_rate) == (5e-5, 3e-5)
    assert (plain.teacher_learning_rate, plain.learning_rate) == (5e-5, 3e-5)
    quick = options_from_args(build_parser().parse_args(["--profile", "quick", "--output_dir", "x"]))
    assert (quick.teacher_learning_rate, quick.learning_rate) == (2e-4, 3e-5)
    mine = options_from_args(build_parser().parse_args(
        ["--profile", "quick", "--teacher_learning_rate", "1e-4", "--output_dir", "x"]))
    assert mine.teacher_learning_rate == 1e-4


def test_ctrl_c_inside_paddle_is_reported_as_an_interrupt(monkeypatch, tmp_path, capsys):
    """An error raised while the signal flag is set is the interrupt surfacing inside a
    library: 'interrupted' and exit 130 (resume hint), not a failure with exit 2."""
    import ofaserve.core.interrupts as interrupts
    import ofaserve.compress.cli as cli
    import ofaserve.compress.pipeline as pipeline
    from ofaserve.core.errors import OfaserveError

    def fails(opts):
        raise OfaserveError("paddle failed: RuntimeError")
    monkeypatch.setattr(pipeline, "compress_model", fails)  # the CLI imports it once it has set CPU threads
    monkeypatch.setattr(interrupts, "terminate_like_interrupt", lambda: None)  # keep pytest's handlers
    argv = ["--output_dir", str(tmp_path / "c")]
    assert cli.main(argv) == 2 and "error: paddle failed" in capsys.readouterr().err
    monkeypatch.setattr(interrupts, "_INTERRUPTED", [15])
    assert cli.main(argv) == 130 and "--resume" in capsys.readouterr().err


@pytest.mark.parametrize("module, argv, flag, said", [
    ("ofaserve.compress.cli", ["--output_dir", "x", "--width_mult_list", "1.0", "1.7"], "--width_mult_list", "1.7"),
    ("ofaserve.compress.cli", ["--output_dir", "x", "--depth_mult_list", "1.0", "0"], "--depth_mult_list", "0"),
    ("ofaserve.export.cli", ["--model_name_or_path", "x", "--width_mult", "abc"], "--width_mult", "'abc', or 'auto'"),
    ("ofaserve.export.cli", ["--model_name_or_path", "x", "--depth_mult", "9"], "--depth_mult", "9"),
    ("ofaserve.demo", ["--width_mult", "2"], "--width_mult", "2"),
])
def test_bad_width_or_depth_is_one_usage_error_naming_the_value(module, argv, flag, said, capsys):
    """Width and depth are parsed once at the CLI edge (core.stage_cli.argument_type): the
    value type's own message, as argparse's usage error (exit 2)."""
    import importlib

    parser = importlib.import_module(module).build_parser()
    with pytest.raises(SystemExit) as e:
        parser.parse_args(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"error: argument {flag}: a " in err and said in err, err
